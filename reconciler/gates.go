package reconciler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"ebb.dev/ebb/planner"
)

// A gate is one check of a release: its rollout, its pods, its other objects, the traffic
// a blue-green switch moved, a health check, metric thresholds, a person's approval. A stage's
// gates are one ordered list (gatesFor), built from its verify and approval settings; every
// model runs them the same way, at the checkpoints of its tasks (stageRun.verify and
// stageRun.promote). A new check is a new file with its gate, and a line in allGates.
type gate interface {
	// name names the gate in task messages and the ebb_gate_duration_seconds metric.
	name() string
	// applies reports whether the gate checks sub in this stage run; gatesFor has already
	// dropped the gates the stage does not configure.
	applies(s *stageRun, sub subject) bool
	// check runs the gate on sub. A release it finds bad fails with a *VerificationError
	// (or a rejection); other errors are the cluster's or the pipeline's (see classify).
	check(ctx context.Context, s *stageRun, sub subject) error
}

// A guard is a gate that watches beside the others for as long as a verification lasts,
// and fails it the moment it finds a fault, however long the others would still wait.
type guard interface {
	gate
	// watches marks a guard; check returns nil when its context ends without a fault.
	watches()
}

// allGates are every gate, in the order a verification runs them. configured says whether a
// stage asks for the gate at all.
var allGates = []struct {
	gate       gate
	configured func(st *planner.Stage, kind ExecutionKind) bool
}{
	{podsGate{}, func(st *planner.Stage, _ ExecutionKind) bool { return st.Verify.Pods.FailFast }},
	{rolloutGate{}, always},
	{objectsGate{}, always},
	{trafficGate{}, always},
	{healthGate{}, func(st *planner.Stage, _ ExecutionKind) bool { return st.Verify.HealthCheck != nil }},
	// Metrics look back over minutes: right after a rollback they still describe the failed
	// release, and the restored one passed them when it was verified.
	{metricsGate{}, func(st *planner.Stage, k ExecutionKind) bool { return st.Verify.Metrics != nil && k != KindRollback }},
	// A rollback restores a release that was approved, or the stage would not have run it.
	{approvalGate{}, func(st *planner.Stage, k ExecutionKind) bool { return st.Approval != nil && k != KindRollback }},
}

func always(*planner.Stage, ExecutionKind) bool { return true }

// gatesFor returns the gates of a stage, in order, for an execution of kind.
func gatesFor(st *planner.Stage, kind ExecutionKind) []gate {
	var out []gate
	for _, g := range allGates {
		if g.configured(st, kind) {
			out = append(out, g.gate)
		}
	}
	return out
}

// checkpoint is where in a model's tasks the gates run.
type checkpoint int

const (
	// atCanary: the new release runs beside the old one, on a share of the traffic (a first
	// phase) or on none (a green color, reached through its preview Service).
	atCanary checkpoint = iota
	// atPromote: the release is about to take all the traffic: where a person approves.
	atPromote
	// atFull: the release takes all the traffic.
	atFull
)

// subject is what one verification checks.
type subject struct {
	at checkpoint
	// deployments are the Deployments (in the stage's namespace) whose rollout is awaited
	// and whose new pods are watched.
	deployments []string
	// objects are the release's other objects applied so far, whose health is read.
	objects []*unstructured.Unstructured
	// service is the Service a health check reaches ("{service}" in its URL).
	service string
	// live is true when real traffic reaches the release, so that metrics describe it.
	live bool
	// switched, after a blue-green switch, is the Deployment whose pods the stage's Service
	// (service) must now send all its traffic to.
	switched string
}

// verify runs the stage's gates that apply to sub: the guards beside the others, which run
// in order. It returns the first failure: a guard's fault ends the others at once. Each
// gate's duration is recorded, and on success the task's message lists them.
func (s *stageRun) verify(ctx context.Context, sub subject) error {
	start := time.Now()
	defer func() {
		s.r.metrics.verifyDuration.WithLabelValues(s.pipeline, s.stage().Name).Observe(time.Since(start).Seconds())
	}()
	var guards, steps []gate
	for _, g := range s.gates {
		if !g.applies(s, sub) {
			continue
		}
		if _, ok := g.(guard); ok {
			guards = append(guards, g)
		} else {
			steps = append(steps, g)
		}
	}
	vctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, g := range guards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.timed(vctx, g, sub); err != nil && vctx.Err() == nil {
				cancel(err)
			}
		}()
	}
	var done []string
	var err error
	for _, g := range steps {
		began := time.Now()
		if err = s.timed(vctx, g, sub); err != nil {
			break
		}
		done = append(done, fmt.Sprintf("%s %s", g.name(), time.Since(began).Round(10*time.Millisecond)))
	}
	cancel(nil) // ends the guards
	wg.Wait()
	if cause := context.Cause(vctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause // a guard's fault: it ended the steps, or came as the last one passed
	}
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	s.note(strings.Join(done, ", "))
	if sub.at == atFull {
		s.settle(ctx)
	}
	return nil
}

// promote runs the gates at atPromote (an approval) as their own task, before the release
// takes all the traffic.
func (s *stageRun) promote(ctx context.Context) error {
	sub := subject{at: atPromote}
	for _, g := range s.gates {
		if !g.applies(s, sub) {
			continue
		}
		if err := s.task(ctx, s.rec, TaskApproval, false, func(ctx context.Context) error {
			return s.timed(ctx, g, sub)
		}); err != nil {
			return err
		}
	}
	return nil
}

// timed runs one gate and records how long it took and how it ended.
func (s *stageRun) timed(ctx context.Context, g gate, sub subject) error {
	start := time.Now()
	err := g.check(ctx, s, sub)
	result := "passed"
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return err // ended by a guard, or by shutdown: not the gate's result
	case isVerification(err) || isRejected(err):
		result = "failed"
	default:
		result = "error"
	}
	s.r.metrics.gateDuration.WithLabelValues(s.stage().Name, g.name(), result).Observe(time.Since(start).Seconds())
	return err
}

// note sets the message of the stage's running task, to say what its verification found.
func (s *stageRun) note(msg string) {
	s.mu.Lock() // a write of the record may be under way (saveLater)
	defer s.mu.Unlock()
	for i := range s.rec.Tasks {
		if s.rec.Tasks[i].Status == Running {
			s.rec.Tasks[i].Message = msg
		}
	}
}

func isVerification(err error) bool {
	var v *VerificationError
	return errors.As(err, &v)
}

// changedCluster reports whether a stage's tasks before a failure wrote to its cluster: an
// approval gate or a failure at the first task means nothing was applied.
func changedCluster(rec *StageRecord) bool {
	for _, t := range rec.Tasks {
		if t.Name != TaskApproval && t.Status == Completed {
			return true
		}
	}
	return false
}
