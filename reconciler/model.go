package reconciler

import (
	"context"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"ebb.dev/ebb/internal/ssa"
	"ebb.dev/ebb/planner"
)

// A model is how a stage's release reaches its cluster: rolling, phased or blue-green. One is
// chosen per stage (modelOf), and the execution calls it the same way whatever it is. Each
// model runs its tasks in order, and at each point where the release should be checked runs
// the stage's gates (verify, promote); the gates are the same for every model.
type model interface {
	// deploy applies the stage's release and verifies it, asking for an approval where the
	// stage wants one. It leaves the release running and verified, or returns the failure.
	deploy(ctx context.Context, s *stageRun) error
	// restore puts the stage back on its known-good release (s.d), as fast as the model
	// allows, and verifies it.
	restore(ctx context.Context, s *stageRun) error
	// discard removes what deploy applied before an approval that nobody gave in time (a first
	// phase, a green color): it never served traffic alone, and nobody approved it.
	discard(ctx context.Context, s *stageRun) error
}

// models are the deployment models, in the order they are tried: the first that matches a
// stage runs it. A new model is a file with its type, and a line here.
var models = []struct {
	name    string
	matches func(*planner.Stage) bool
	model   model
}{
	{"blue-green", func(s *planner.Stage) bool { return s.Model == planner.ModelBlueGreen }, blueGreen{}},
	{"phased", func(s *planner.Stage) bool { return len(s.Phases) > 0 }, phased{}},
	{"rolling", func(*planner.Stage) bool { return true }, rolling{}},
}

// modelOf returns the model of a stage.
func modelOf(s *planner.Stage) model {
	for _, m := range models {
		if m.matches(s) {
			return m.model
		}
	}
	return rolling{}
}

// stageRun is one stage of an execution on its way through its model: the execution, the
// pipeline, the stage's release and cluster, the stage's record in the execution, and the
// gates its release is checked by. It is built once per stage (newStageRun) and handed to
// the model and every gate.
type stageRun struct {
	*run
	pipeline string
	cluster  *Cluster
	d        *Desired
	rec      *StageRecord
	gates    []gate
	// applied is what this run applied, for settle; sent holds the same objects as ebb sent
	// them, index for index.
	applied []ssa.Applied
	sent    []*unstructured.Unstructured
}

// newStageRun prepares stage d of pipeline for this execution.
func (e *run) newStageRun(pipeline string, cluster *Cluster, d *Desired, rec *StageRecord) *stageRun {
	return &stageRun{run: e, pipeline: pipeline, cluster: cluster, d: d, rec: rec, gates: gatesFor(d.Stage, e.x.Spec.Kind)}
}

// stage is the stage's definition.
func (s *stageRun) stage() *planner.Stage { return s.d.Stage }

// rollback reports whether this run restores a known-good release.
func (s *stageRun) rollback() bool { return s.x.Spec.Kind == KindRollback }
