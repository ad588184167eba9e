package reconciler

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/planner"
)

// deploy runs a Deploy execution for its target: each stage in order, each through its
// model's tasks. A stage whose release is already current is skipped. When a stage fails,
// later stages never start; with `rollback: true` and a known-good release the stage is
// rolled back (rollback.go). It returns errParked when shutdown interrupted it.
func (e *run) deploy(ctx context.Context, t *Target, d decision) error {
	if e.x.Status.Phase == RollingBack {
		return e.resumeRollback(ctx, t)
	}
	comment := e.x.Status.Comment
	if d.redeployOf != nil {
		comment = redeployComment(t, d.redeployOf)
	}
	if err := e.setPhase(ctx, Running, comment); err != nil {
		return err
	}
	for i := range t.Stages {
		if err := e.deployStage(ctx, t, &t.Stages[i]); err != nil {
			return err
		}
		if e.x.Status.Phase.Terminal() || e.x.Status.Phase == RollingBack {
			return nil
		}
	}
	return e.setPhase(ctx, Completed, "")
}

// deployStage runs one stage and records its outcome in the execution and the stage's ledger.
func (e *run) deployStage(ctx context.Context, t *Target, d *Desired) error {
	rec := e.stage(d.Stage.Name)
	if rec.Status == Completed {
		return nil // resumed after this stage finished
	}
	ledger, err := e.r.store.Ledger(ctx, t.Name(), d.Stage.Name)
	if err != nil {
		return err
	}
	image := serviceImage(d.Images, t.Pipeline.Spec.Input.Image)
	e.x.Status.Stage, e.x.Status.Image = d.Stage.Name, image
	if cur := ledger.Status.Current; cur != nil && cur.Hash == d.Hash && cur.RestoredBy == "" && cur.Commit != "" {
		now := metav1.Now()
		rec.Status, rec.ReleaseHash, rec.Images, rec.StartedAt, rec.FinishedAt = Completed, d.Hash, d.Images, &now, &now
		rec.Message = "unchanged: already runs release " + releaseID(d.Hash) + " of commit " + short(cur.Commit)
		return e.save(ctx)
	}
	now := metav1.Now()
	rec.Status, rec.ReleaseHash, rec.Images, rec.StartedAt = Running, d.Hash, d.Images, &now
	if err := e.save(ctx); err != nil {
		return err
	}

	target, err := e.r.target(d.Stage.Cluster)
	if err == nil {
		err = e.runModel(ctx, target, t, d, rec)
	} else {
		err = &taskError{task: TaskCreateResources, err: err}
	}
	if errors.Is(err, errParked) {
		return err
	}
	done := metav1.Now()
	rec.FinishedAt = &done
	if isExpired(err) {
		return e.approvalExpired(ctx, target, d, rec, err)
	}
	release := ReleaseRecord{
		Commit: t.Commit.SHA, ShortCommit: short(t.Commit.SHA), Hash: d.Hash, Images: d.Images,
		Execution: e.x.Spec.DisplayName, At: &done,
	}
	if err == nil {
		rec.Status = Completed
		ledger.Status.recordVerified(release)
		if serr := e.r.store.SaveLedger(ctx, ledger); serr != nil {
			return serr
		}
		return e.save(ctx)
	}
	return e.stageFailed(ctx, t, d, rec, ledger, release, err)
}

// stageFailed quarantines the failed release, then rolls the stage back or fails the
// execution. The execution record is written before the ledger, so a restart in between
// finds the rollback to finish.
func (e *run) stageFailed(ctx context.Context, t *Target, d *Desired, rec *StageRecord, ledger *StageLedger, release ReleaseRecord, cause error) error {
	task := TaskCreateResources
	var te *taskError
	if errors.As(cause, &te) {
		task = te.task
	}
	rec.Status = Failed
	rec.Message = cause.Error()
	release.Reason = fmt.Sprintf("task %q: %v", task, unwrapTask(cause))
	good := ledger.Status.LastKnownGood
	trigger := fmt.Sprintf("stage %s, task %q failed at commit %s: %v", d.Stage.Name, task, short(t.Commit.SHA), unwrapTask(cause))
	// Only a release found bad is quarantined. A failure of the cluster (unreachable,
	// forbidden, overloaded) says nothing of the release: the commit is tried again later.
	quarantine := releaseFault(cause)
	if !quarantine {
		e.x.Status.Retryable = true
		trigger += " (a failure of the cluster, not of the release: the commit is tried again later)"
	}

	switch {
	case isRejected(cause) && !changedCluster(rec):
		if err := e.setPhase(ctx, Failed, trigger+"; nothing was applied to the cluster"); err != nil {
			return err
		}
	case !d.Stage.Rollback:
		if err := e.setPhase(ctx, Failed, trigger+"; rollback is off for this stage"); err != nil {
			return err
		}
	case good == nil:
		if err := e.setPhase(ctx, Failed, trigger+"; no known-good release to roll back to (first deploy of this stage)"); err != nil {
			return err
		}
	default:
		e.r.metrics.rollbacks.WithLabelValues(t.Name(), d.Stage.Name, reason(cause)).Inc()
		comment := fmt.Sprintf("%s; rolling back to commit %s (image %s)", trigger, short(good.Commit), serviceImage(good.Images, t.Pipeline.Spec.Input.Image))
		if err := e.setPhase(ctx, RollingBack, comment); err != nil {
			return err
		}
	}
	if quarantine {
		ledger.Status.recordFailed(release)
		if err := e.r.store.SaveLedger(ctx, ledger); err != nil {
			return err
		}
	}
	if e.x.Status.Phase == RollingBack {
		return e.rollback(ctx, t, d.Stage.Name, *good)
	}
	return nil
}

// releaseFault reports whether a failure is the release's: a verification failed, a person
// rejected it, or the API server refused its objects as invalid. Anything else (a cluster that
// cannot be reached, forbids, or is overloaded) is the cluster's.
func releaseFault(err error) bool {
	var v *VerificationError
	switch {
	case errors.As(err, &v), isRejected(err):
		return true
	case apierrors.IsInvalid(err), apierrors.IsBadRequest(err), apierrors.IsRequestEntityTooLargeError(err):
		return true
	}
	return false
}

func unwrapTask(err error) error {
	var te *taskError
	if errors.As(err, &te) {
		return te.err
	}
	return err
}

// approvalExpired cancels the execution whose approval nobody gave in time, and removes what
// the stage deployed before its gate (a green color, a first phase): it never took traffic
// alone, and nobody approved it.
func (e *run) approvalExpired(ctx context.Context, cluster *Cluster, d *Desired, rec *StageRecord, cause error) error {
	rec.Status, rec.Message = Canceled, unwrapTask(cause).Error()
	if cluster != nil && changedCluster(rec) {
		var err error
		switch {
		case d.Stage.Model == planner.ModelBlueGreen:
			var c *colors
			if c, err = colorsOf(d); err == nil {
				err = cluster.deleteDeployment(ctx, d.Namespace, c.green.GetName())
			}
		case len(d.Stage.Phases) > 0:
			err = cluster.deletePhase1(ctx, d.Namespace, d.Deployment)
		}
		if err != nil {
			e.log.Error("remove the unapproved release", "stage", d.Stage.Name, "err", err)
		}
	}
	return e.setPhase(ctx, Canceled, fmt.Sprintf("stage %s: %v", d.Stage.Name, unwrapTask(cause)))
}
