package reconciler

import (
	"context"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/internal/ratelimit"
)

// rollback runs the rollback execution <pipeline>_<stage>_rollback#<n> for the parent run e:
// it reapplies the release of the last known-good commit (its image and every other rendered
// object), prunes what the failed release added, and verifies it. The stage's ledger then
// holds the known-good release as current, marked as restored, so polls do not re-apply the
// failed one. The parent ends ROLLBACK_COMPLETED or ROLLBACK_FAILED.
//
// Its callers (stageFailed, resumeRollback) mark ctx ratelimit.Urgent: every request of a
// rollback, to the stage's cluster and to the records, goes before those of deploys.
func (e *run) rollback(ctx context.Context, failed *Target, stage string, good ReleaseRecord) error {
	detected := time.Now()
	rb, err := e.rollbackExecution(ctx, failed, stage, good)
	if err != nil {
		return err
	}
	// The rollback logs under its own name, with the commit and execution that failed. Its
	// record was just written (created, or read as it was saved): the first task's start is
	// batched with what follows, not written at once.
	rr := &run{r: e.r, x: rb, log: e.r.log.With("pipeline", failed.Name(), "commit", short(failed.Commit.SHA),
		"parent", e.x.Spec.DisplayName, "execution", rb.Spec.DisplayName), resumed: e.resumed, slot: e.slot,
		savedAt: time.Now()}
	if !rb.Status.Phase.Terminal() {
		err = rr.restore(ctx, failed.Name(), stage, good)
		if errors.Is(err, errParked) {
			return err
		}
		e.r.metrics.timeToRollback.WithLabelValues(failed.Name(), stage).Observe(time.Since(detected).Seconds())
		if err != nil {
			if serr := rr.setPhase(ctx, Failed, fmt.Sprintf("%s; the rollback failed: %v", rb.Status.Comment, unwrapTask(err))); serr != nil {
				return serr
			}
		} else if serr := rr.setPhase(ctx, Completed, ""); serr != nil {
			return serr
		}
	}
	if rb.Status.Phase == Completed {
		return e.setPhase(ctx, RollbackCompleted, e.x.Status.Comment+"; restored by "+rb.Spec.DisplayName)
	}
	return e.setPhase(ctx, RollbackFailed, e.x.Status.Comment+"; "+rb.Spec.DisplayName+" failed")
}

// rollbackExecution returns the parent's rollback execution, creating it on first call. Its
// comment names the trigger point: stage, task, reason, failed commit, restored commit and
// image.
func (e *run) rollbackExecution(ctx context.Context, failed *Target, stage string, good ReleaseRecord) (*Execution, error) {
	if name := e.x.Status.Rollback; name != "" {
		return e.r.store.GetExecution(ctx, name)
	}
	rb := &Execution{Spec: ExecutionSpec{
		Pipeline: failed.Name(), Kind: KindRollback, Stage: stage, Parent: e.x.Name,
		Commit: good.Commit, CommitMessage: "rollback of " + e.x.Spec.DisplayName,
	}}
	rb.Status.Phase = Running
	rb.Status.Stage = stage
	rb.Status.Image = serviceImage(good.Images, failed.Pipeline.Spec.Input.Image)
	rb.Status.Comment = fmt.Sprintf("rollback of %s: %s", e.x.Spec.DisplayName, e.x.Status.Comment)
	now := metav1.Now()
	rb.Status.StartedAt = &now
	rb.Status.recordChange(now)
	rb, err := e.r.store.CreateExecution(ctx, rb)
	if err != nil {
		return nil, err
	}
	e.r.event(ctx, rb, Running, rb.Status.Comment)
	e.x.Status.Rollback = rb.Name
	return rb, e.save(ctx)
}

// restore applies and verifies the known-good release in this (rollback) run's stage, and
// records it as the stage's current release.
func (e *run) restore(ctx context.Context, pipeline, stageName string, good ReleaseRecord) error {
	d, err := e.r.knownGood(ctx, pipeline, stageName, good)
	if err != nil {
		rec := e.stage(stageName)
		rec.Status, rec.Message = Failed, err.Error()
		return &taskError{task: TaskCreateResources, err: err}
	}
	cluster, err := e.r.target(d.Stage.Cluster)
	if err != nil {
		return &taskError{task: TaskCreateResources, err: err}
	}
	rec := e.stage(stageName)
	now := metav1.Now()
	rec.Status, rec.ReleaseHash, rec.Images, rec.StartedAt = Running, good.Hash, good.Images, &now
	if err := e.saveSoon(ctx); err != nil {
		return err
	}
	// A cluster that does not answer is waited for: a rollback never fails for it.
	err = e.untilClusterAnswers(ctx, stageName, func(ctx context.Context) error {
		if objs, err := appliedObjects(d); err == nil {
			if err := e.r.addToInventory(ctx, pipeline, stageName, objs); err != nil {
				return &taskError{task: TaskCreateResources, err: err}
			}
		}
		return modelOf(d.Stage).restore(ctx, e.newStageRun(pipeline, cluster, d, rec))
	})
	if errors.Is(err, errParked) {
		return err
	}
	done := metav1.Now()
	rec.FinishedAt = &done
	if err != nil {
		rec.Status, rec.Message = Failed, err.Error()
		return err
	}
	rec.Status = Completed
	rec.Message = joinNonEmpty(rec.Message, restoredNote(good, d.Hash))
	return e.r.updateLedger(ctx, pipeline, stageName, func(s *StageLedgerStatus) bool {
		s.recordRestored(good, e.x.Spec.DisplayName, &done)
		return true
	})
}

// resumeRollback finishes a parent execution that a restart found ROLLING_BACK.
func (e *run) resumeRollback(ctx context.Context, t *Target) error {
	ctx = ratelimit.Urgent(ctx)
	stage := e.x.Status.Stage
	rec := e.stage(stage)
	var good *ReleaseRecord
	// The daemon may have died between recording ROLLING_BACK and quarantining the release.
	if err := e.r.updateLedger(ctx, t.Name(), stage, func(s *StageLedgerStatus) bool {
		good = s.LastKnownGood
		if rec.ReleaseHash == "" || s.failed(rec.ReleaseHash) != nil {
			return false
		}
		now := metav1.Now()
		s.recordFailed(ReleaseRecord{
			Commit: t.Commit.SHA, ShortCommit: short(t.Commit.SHA), Hash: rec.ReleaseHash, Images: rec.Images,
			Execution: e.x.Spec.DisplayName, At: &now, Reason: rec.Message,
		})
		return true
	}); err != nil {
		return err
	}
	if good == nil {
		return e.setPhase(ctx, RollbackFailed, e.x.Status.Comment+"; no known-good release found on resume")
	}
	return e.rollback(ctx, t, stage, *good)
}
