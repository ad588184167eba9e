package reconciler

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/internal/ratelimit"
	"ebb.dev/ebb/internal/ssa"
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
	if e.x.Status.Failure == FailureWaiting {
		// Resumed while it waited for its cluster: it tries again now.
		comment, e.x.Status.Failure, e.x.Status.Comment = "", "", ""
	}
	if d.redeployOf != nil {
		comment = joinComments(comment, redeployComment(t, d.redeployOf))
	}
	if err := e.start(ctx, comment); err != nil {
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
	ledger, err := e.r.ledger(ctx, t.Name(), d.Stage.Name)
	if err != nil {
		return err
	}
	image := serviceImage(d.Images, t.Pipeline.Spec.Input.Image)
	e.x.Status.Stage, e.x.Status.Image = d.Stage.Name, image
	if cur := ledger.Status.Current; cur != nil && cur.Hash == d.Hash && cur.RestoredBy == "" && cur.Commit != "" {
		now := metav1.Now()
		rec.Status, rec.ReleaseHash, rec.Images, rec.StartedAt, rec.FinishedAt = Completed, d.Hash, d.Images, &now, &now
		rec.Message = "unchanged: already runs release " + releaseID(d.Hash) + " of commit " + short(cur.Commit)
		return e.saveSoon(ctx)
	}
	now := metav1.Now()
	rec.Status, rec.ReleaseHash, rec.Images, rec.StartedAt = Running, d.Hash, d.Images, &now
	if err := e.saveSoon(ctx); err != nil {
		return err
	}

	var target *Cluster
	err = e.untilClusterAnswers(ctx, d.Stage.Name, func(ctx context.Context) error {
		var err error
		if target, err = e.r.target(d.Stage.Cluster); err != nil {
			return &taskError{task: TaskCreateResources, err: err}
		}
		if objs, err := appliedObjects(d); err == nil {
			if err := e.r.addToInventory(ctx, t.Name(), d.Stage.Name, objs); err != nil {
				return &taskError{task: TaskCreateResources, err: err}
			}
		}
		return modelOf(d.Stage).deploy(ctx, e.newStageRun(t.Name(), target, d, rec))
	})
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
		if err := e.r.updateLedger(ctx, t.Name(), d.Stage.Name, func(s *StageLedgerStatus) bool {
			s.recordVerified(release)
			return true
		}); err != nil {
			return err
		}
		return e.saveSoon(ctx) // the next stage's verification, or the end, writes it
	}
	return e.stageFailed(ctx, t, d, rec, ledger.Status.LastKnownGood, release, err)
}

func joinComments(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// unclassifiedAttempts is how often an error nobody classified is tried before it counts as
// the release's: it is never retried forever.
const unclassifiedAttempts = 3

// untilClusterAnswers runs fn (a stage's tasks, which skip what they completed) until it ends
// with anything but a failure of the cluster. While the cluster does not answer, the execution
// is WAITING, its comment saying what failed and when it is tried again, with a back-off that
// doubles from Options.RetryBackoff up to an hour: the same execution, never a rollback, and
// nothing else happens to the stage meanwhile. An unclassified error is tried
// unclassifiedAttempts times, then counts as stalled.
func (e *run) untilClusterAnswers(ctx context.Context, stage string, fn func(context.Context) error) error {
	wait, comment := e.r.opts.RetryBackoff, e.x.Status.Comment
	unclassified := 0
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil || errors.Is(err, errParked) || ctx.Err() != nil || isExpired(err) {
			return err
		}
		switch classify(err) {
		case FailureWaiting:
		case "":
			if unclassified++; unclassified >= unclassifiedAttempts {
				return asStalled(err)
			}
		default:
			return err
		}
		e.x.Status.Failure = FailureWaiting
		why := fmt.Sprintf("stage %s, task %q: %v; waiting for the cluster to answer: attempt %d failed, trying again in %s",
			stage, taskOf(err), unwrapTask(err), attempt, wait)
		if err := e.setPhase(ctx, Waiting, why); err != nil {
			return err
		}
		e.slot.free() // waiting for a cluster takes no slot from executions that can run
		select {
		case <-ctx.Done():
			return errParked
		case <-time.After(wait):
		}
		if err := e.slot.take(ctx); err != nil {
			return err
		}
		wait = min(wait*2, retryMax)
		e.x.Status.Failure, e.x.Status.Comment = "", comment
		if err := e.setPhase(ctx, Running, ""); err != nil {
			return err
		}
	}
}

// stageFailed records a failed stage by the class of its error, then rolls the stage back or
// fails the execution:
//   - a release that failed verification (or was rejected) is quarantined;
//   - a stalled release (the release or the pipeline is wrong) is recorded as stalled, so it
//     is not tried again until a commit changes the release or the stage, and quarantined
//     when some of it was applied;
//   - with rollback on, a known-good release, and something applied, the stage rolls back.
//
// The execution record is written before the ledger, so a restart in between finds the
// rollback to finish.
func (e *run) stageFailed(ctx context.Context, t *Target, d *Desired, rec *StageRecord, good *ReleaseRecord, release ReleaseRecord, cause error) error {
	task := taskOf(cause)
	class := classify(cause)
	if class != FailureVerification {
		class = FailureStalled
	}
	e.x.Status.Failure = class
	rec.Status = Failed
	rec.Message = cause.Error()
	release.Reason = fmt.Sprintf("task %q: %v", task, unwrapTask(cause))
	trigger := fmt.Sprintf("stage %s, task %q failed at commit %s: %v", d.Stage.Name, task, short(t.Commit.SHA), unwrapTask(cause))
	if class == FailureStalled {
		where := "the release or the pipeline"
		if file := t.Pipeline.File; file != "" {
			where = fmt.Sprintf("the release or the pipeline (%s, manifests %s)", file, t.Pipeline.ManifestsOf(d.Stage))
		}
		trigger += " (" + where + " must change: it is not tried again until a commit changes it)"
	}
	applied := wroteCluster(rec, cause)
	if ok, whyNot := rollbackTo(d.Stage, good, applied); ok {
		// From here on, every request of the rollback goes first (ratelimit.Urgent).
		ctx = ratelimit.Urgent(ctx)
		e.r.metrics.rollbacks.WithLabelValues(t.Name(), d.Stage.Name, reason(cause)).Inc()
		comment := fmt.Sprintf("%s; rolling back to commit %s (image %s)", trigger, short(good.Commit), serviceImage(good.Images, t.Pipeline.Spec.Input.Image))
		if err := e.setPhase(ctx, RollingBack, comment); err != nil {
			return err
		}
	} else if err := e.setPhase(ctx, Failed, trigger+"; "+whyNot); err != nil {
		return err
	}
	if err := e.r.updateLedger(ctx, t.Name(), d.Stage.Name, func(s *StageLedgerStatus) bool {
		s.recordFailure(release, class, applied, d.Stage)
		return true
	}); err != nil {
		return err
	}
	if e.x.Status.Phase == RollingBack {
		return e.rollback(ctx, t, d.Stage.Name, *good)
	}
	return nil
}

// wroteCluster reports whether a stage's tasks wrote to its cluster before cause stopped
// them: a task that writes completed, or the failing one was refused a write part-way (the
// objects before it in the task were applied).
func wroteCluster(rec *StageRecord, cause error) bool {
	if changedCluster(rec) {
		return true
	}
	var oe *ssa.ObjectError
	return errors.As(cause, &oe) && (oe.Verb == "apply" || oe.Verb == "delete")
}

// asStalled makes err, keeping its task, the release's fault.
func asStalled(err error) error {
	var te *taskError
	if errors.As(err, &te) {
		return &taskError{task: te.task, err: &StalledError{Err: te.err}}
	}
	return &StalledError{Err: err}
}

// taskOf returns the task an error failed, or the first task.
func taskOf(err error) string {
	var te *taskError
	if errors.As(err, &te) {
		return te.task
	}
	return TaskCreateResources
}

// stageFingerprint identifies a stage's definition, so that a stalled release is tried again
// when the pipeline changes the stage (its cluster, say) without changing the release.
func stageFingerprint(s *planner.Stage) string {
	b, _ := json.Marshal(s)
	return fmt.Sprintf("sha256:%x", sha256.Sum256(b))
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
		if err := modelOf(d.Stage).discard(ctx, e.newStageRun(e.x.Spec.Pipeline, cluster, d, rec)); err != nil {
			e.log.Error("remove the unapproved release", "stage", d.Stage.Name, "err", err)
		}
	}
	return e.setPhase(ctx, Canceled, fmt.Sprintf("stage %s: %v", d.Stage.Name, unwrapTask(cause)))
}
