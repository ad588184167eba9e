package reconciler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/internal/ratelimit"
)

// run is one execution in progress: its record, and where to write it.
type run struct {
	r   *Reconciler
	x   *Execution
	log *slog.Logger
	// resumed is set for an execution a restarted daemon continues: the tasks it completed
	// that write to the cluster run again (applying is idempotent), so what it verifies is
	// what the cluster runs now, not what it ran before the restart.
	resumed bool
	// savedAt is when the record was last written (see saveSoon).
	savedAt time.Time
	// slot is the execution's share of Options.MaxConcurrent; nil for one that does not wait
	// for it (resumed after a restart).
	slot *execSlot
	// mu guards the record while a verification's write may be under way (saveLater).
	mu sync.Mutex
}

// saveBatch is how long changes nobody would miss wait to be written with the next ones: the
// tasks that start and end within it are one write, not two each. Measured at 500 pipelines
// on a busy API server, a task often takes longer than 250ms, and a shorter window saved
// little (11.7 writes per two-stage execution).
const saveBatch = 2 * time.Second

// saveSoon writes the record when it was last written more than saveBatch ago, and otherwise
// leaves the change for the next write. It is for changes that a later one follows at once
// (a task's start and end, a stage's start): a change of status, a verification starting
// (which may last minutes) and the end of the execution are written at once (save), with
// whatever waited. A daemon that dies in between loses only task times: a resumed execution
// runs its tasks again.
func (e *run) saveSoon(ctx context.Context) error {
	if time.Since(e.savedAt) < saveBatch {
		return nil
	}
	return e.save(ctx)
}

// saveLater writes the record after delay, unless the returned function is called first;
// that function waits for a write under way and returns its error. Until it returns, the
// record is written by another goroutine: the task changes it only under e.mu (see note).
func (e *run) saveLater(ctx context.Context, delay time.Duration) func() error {
	var err error
	done := make(chan struct{})
	timer := time.AfterFunc(delay, func() {
		defer close(done)
		e.mu.Lock()
		defer e.mu.Unlock()
		err = e.save(ctx)
	})
	return func() error {
		if timer.Stop() {
			return nil
		}
		<-done
		return err
	}
}

// errParked means the daemon is shutting down: the execution stays as recorded and a
// restarted daemon continues it.
var errParked = errors.New("parked for shutdown")

// save writes the execution record. It uses a context of its own, so that a shutdown still
// records what happened. Only this run writes its status, so a conflict takes the newest
// resourceVersion and writes again. While the home cluster does not answer, it tries again
// with a growing back-off, for as long as it takes: nothing else happens to the pipeline
// before its record says what happened (a shutdown meanwhile parks the run, and a restarted
// daemon finds the last record that was saved).
func (e *run) save(ctx context.Context) error {
	wait := 200 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := e.saveOnce(ctx)
		if err == nil {
			e.savedAt = time.Now()
			return nil
		}
		if apierrors.IsConflict(err) && attempt < 5 {
			continue
		}
		if classify(err) != FailureWaiting {
			return err
		}
		if ctx.Err() != nil {
			return errParked
		}
		if attempt == 3 {
			e.log.Warn("the execution record cannot be saved; trying again until the home cluster answers", "err", err)
		}
		select {
		case <-ctx.Done():
			return errParked
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// saveOnce writes the record once; a conflict refreshes its resourceVersion.
func (e *run) saveOnce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := e.r.store.UpdateExecution(ctx, e.x)
	if apierrors.IsConflict(err) {
		if latest, gerr := e.r.store.GetExecution(ctx, e.x.Name); gerr == nil {
			e.x.ResourceVersion = latest.ResourceVersion
		}
	}
	return err
}

// setPhase records the execution's status and comment.
func (e *run) setPhase(ctx context.Context, phase Status, comment string) error {
	e.changePhase(phase, comment)
	e.announce(ctx, phase, comment)
	return e.save(ctx)
}

// start records the execution RUNNING. A new execution (execute leaves its record to this) is
// created so: the create's first status write is this one, not one more.
func (e *run) start(ctx context.Context, comment string) error {
	if e.x.Name != "" {
		return e.setPhase(ctx, Running, comment)
	}
	e.changePhase(Running, comment)
	created, err := e.r.store.CreateExecution(ctx, e.x)
	if err != nil {
		return err
	}
	e.x, e.savedAt = created, time.Now()
	e.log = e.log.With("execution", created.Spec.DisplayName)
	e.announce(ctx, Running, comment)
	return nil
}

// changePhase sets the execution's status and comment in its record, not saved yet.
func (e *run) changePhase(phase Status, comment string) {
	e.x.Status.Phase = phase
	if comment != "" {
		e.x.Status.Comment = comment
	}
	now := metav1.Now()
	if phase == Running && e.x.Status.StartedAt == nil {
		e.x.Status.StartedAt = &now
	}
	if phase.Terminal() {
		e.x.Status.FinishedAt = &now
		e.r.metrics.executions.WithLabelValues(e.x.Spec.Pipeline, string(phase)).Inc()
	}
	e.x.Status.recordChange(now)
}

// announce logs a change of the execution's status and records it as an Event.
func (e *run) announce(ctx context.Context, phase Status, comment string) {
	e.log.Info("execution status", "status", phase, "comment", comment)
	e.r.event(ctx, e.x, phase, comment)
}

// recordChange appends the status as it is now to History, unless it is the newest entry
// already, and drops the oldest past historyLimit.
func (s *ExecutionStatus) recordChange(at metav1.Time) {
	seq := 1
	if n := len(s.History); n > 0 {
		last := s.History[n-1]
		if last.Phase == s.Phase && last.Stage == s.Stage && last.Comment == s.Comment {
			return
		}
		seq = last.Seq + 1
	}
	s.History = append(s.History, PhaseChange{Seq: seq, Phase: s.Phase, Stage: s.Stage, At: at, Comment: s.Comment})
	if over := len(s.History) - historyLimit; over > 0 {
		s.History = append([]PhaseChange(nil), s.History[over:]...)
	}
}

// stage returns the record of stage name, adding it if missing.
func (e *run) stage(name string) *StageRecord {
	for i := range e.x.Status.Stages {
		if e.x.Status.Stages[i].Name == name {
			return &e.x.Status.Stages[i]
		}
	}
	e.x.Status.Stages = append(e.x.Status.Stages, StageRecord{Name: name})
	return &e.x.Status.Stages[len(e.x.Status.Stages)-1]
}

// task runs fn as task name of stage, recording it RUNNING, then COMPLETED or FAILED with the
// error's message. A task already COMPLETED in the record is skipped, unless it verifies
// (verification is never trusted across a restart) or the execution was resumed after a
// restart and the task writes to the cluster (the cluster may have changed meanwhile: the
// release is applied again before it is verified). A given approval is never asked again.
//
// A task that verifies sends its requests, its gates' and its record's, before those of
// executions that deploy (ratelimit.Urgent): a release found bad is rolled back sooner.
func (e *run) task(ctx context.Context, stage *StageRecord, name string, verifies bool, fn func(context.Context) error) error {
	t := taskRecord(stage, name)
	if t.Status == Completed && !verifies && (!e.resumed || name == TaskApproval) {
		return nil
	}
	if verifies {
		ctx = ratelimit.Urgent(ctx)
	}
	now := metav1.Now()
	t.Status, t.StartedAt, t.FinishedAt, t.Message = Running, &now, nil, ""
	e.x.Status.Stage = stage.Name
	// A verification may take minutes: one that lasts longer than saveBatch is shown to have
	// begun; a shorter one is written once, when it ends.
	flushed := func() error { return nil }
	if verifies {
		flushed = e.saveLater(ctx, saveBatch)
	} else if err := e.saveSoon(ctx); err != nil {
		return err
	}
	e.log.Info("task started", "stage", stage.Name, "task", name)
	err := fn(ctx)
	if ferr := flushed(); ferr != nil && err == nil && ctx.Err() == nil {
		return ferr
	}
	t = taskRecord(stage, name) // fn may have grown the slice
	if ctx.Err() != nil {
		// Shutting down mid-task: leave it RUNNING; a restarted daemon runs it again.
		return errParked
	}
	done := metav1.Now()
	t.FinishedAt = &done
	if err != nil {
		t.Status, t.Message = Failed, err.Error()
		e.log.Warn("task failed", "stage", stage.Name, "task", name, "err", err)
	} else {
		t.Status = Completed
		e.log.Info("task completed", "stage", stage.Name, "task", name, "duration", done.Sub(t.StartedAt.Time))
	}
	if serr := e.saveSoon(ctx); serr != nil && err == nil {
		return serr
	}
	if err != nil {
		return &taskError{task: name, err: err}
	}
	return nil
}

func taskRecord(stage *StageRecord, name string) *TaskRecord {
	for i := range stage.Tasks {
		if stage.Tasks[i].Name == name {
			return &stage.Tasks[i]
		}
	}
	stage.Tasks = append(stage.Tasks, TaskRecord{Name: name})
	return &stage.Tasks[len(stage.Tasks)-1]
}

// taskError is a failed task: the trigger point of a rollback.
type taskError struct {
	task string
	err  error
}

func (e *taskError) Error() string { return fmt.Sprintf("task %q failed: %v", e.task, e.err) }
func (e *taskError) Unwrap() error { return e.err }

// reason classifies a failure for metrics: the failed check, or "error".
func reason(err error) string {
	var v *VerificationError
	if errors.As(err, &v) {
		return v.Check
	}
	return "error"
}

// serviceImage picks the image of the pipeline's input among a release's images.
func serviceImage(images []string, input string) string {
	for _, img := range images {
		if input != "" && (strings.HasPrefix(img, input+":") || strings.HasPrefix(img, input+"@")) {
			return img
		}
	}
	if len(images) > 0 {
		return images[0]
	}
	return ""
}
