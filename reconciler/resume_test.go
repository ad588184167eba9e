package reconciler

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"ebb.dev/ebb/planner"
)

// TestResumeReappliesBeforeVerifying: a daemon stops while an execution waits for approval
// after its first phase; meanwhile someone changes the phase's Deployment. The restarted
// daemon resumes the execution and applies its release again before it goes on, so what it
// verifies and promotes is the release, not whatever the cluster came to run; the approval
// already asked for is not asked again.
func TestResumeReappliesBeforeVerifying(t *testing.T) {
	f := newFixture(t, true)
	ctx := context.Background()
	f.sync(f.commit("c1", "release 1.0", "1.0"))
	f.waitFor("web#1", Completed)

	f.stage.Phases = []planner.Phase{{Replicas: 1}}
	f.stage.Approval = &planner.Approval{Approvers: []string{"alice"}, Timeout: planner.Duration{Duration: time.Minute}}
	f.sync(f.commit("c2", "release 2.0", "2.0"))
	f.waitFor("web#2", Waiting)
	phaseImage := func() string {
		d, err := f.cs.AppsV1().Deployments(f.ns).Get(ctx, "web-phase1", metav1.GetOptions{})
		require.NoError(t, err)
		return d.Spec.Template.Spec.Containers[0].Image
	}
	require.Equal(t, "registry.example/web:2.0", phaseImage())

	f.stop()
	_, err := f.cs.AppsV1().Deployments(f.ns).Patch(ctx, "web-phase1", types.JSONPatchType,
		[]byte(`[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"registry.example/web:edited-by-hand"}]`), metav1.PatchOptions{FieldManager: "someone"})
	require.NoError(t, err)

	restarted := New(f.r.opts)
	rctx, cancel := context.WithCancel(ctx)
	t.Cleanup(func() { cancel(); restarted.Wait() })
	require.NoError(t, restarted.Resume(rctx))
	require.Eventually(t, func() bool { return phaseImage() == "registry.example/web:2.0" }, 30*time.Second, 50*time.Millisecond,
		"the resumed execution did not apply its phase again: %s", phaseImage())

	approvals, err := f.r.Store().ListApprovals(ctx, "web-2")
	require.NoError(t, err)
	require.Len(t, approvals, 1, "the resumed execution asks in the same approval")
	_, err = f.r.Store().Decide(ctx, approvals[0].Name, true, "alice", "")
	require.NoError(t, err)
	x := f.waitFor("web#2", Completed)
	assert.Equal(t, "registry.example/web:2.0", f.image())
	assert.Len(t, f.executions(), 2)
	var approvalTasks int
	for _, task := range x.Status.Stages[0].Tasks {
		if task.Name == TaskApproval {
			approvalTasks++
		}
	}
	assert.Equal(t, 1, approvalTasks)
}

// TestWaitingTakesNoSlot: with one execution at a time (MaxConcurrent 1), a pipeline waiting
// for a person's approval does not keep another pipeline's release from running.
func TestWaitingTakesNoSlot(t *testing.T) {
	f := newFixture(t, true)
	f.stop()
	opts := f.r.opts
	opts.MaxConcurrent = 1
	r := New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); r.Wait() })
	require.NoError(t, r.Resume(ctx))

	f.stage.Approval = &planner.Approval{Approvers: []string{"alice"}, Timeout: planner.Duration{Duration: time.Minute}}
	web := f.commit("c1", "release web 1.0", "1.0")
	r.Sync(ctx, []*Target{web})
	f.waitFor("web#1", Waiting)

	// Another pipeline, in its own namespace, without an approval.
	stage := *f.stage
	stage.Approval, stage.Namespace = nil, f.ns+"-api"
	api := f.commit("c1", "release api 1.0", "1.0")
	api.Pipeline = &planner.Pipeline{Metadata: planner.Metadata{Name: "api"}, Spec: api.Pipeline.Spec}
	d := &api.Stages[0]
	d.Stage, d.Namespace = &stage, stage.Namespace
	objs := d.Objects.Decode()
	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			o.SetName(stage.Namespace)
		} else {
			o.SetNamespace(stage.Namespace)
		}
	}
	var err error
	d.Objects, err = planner.ObjectsOf(objs)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = f.cs.CoreV1().Namespaces().Delete(context.Background(), stage.Namespace, metav1.DeleteOptions{})
	})
	r.Sync(ctx, []*Target{api})
	f.waitFor("api#1", Completed)
	x, err := f.r.Store().GetExecution(ctx, "web-1")
	require.NoError(t, err)
	assert.Equal(t, Waiting, x.Status.Phase, "web still waits for its approval")
}

// TestOlderTargetOfferedLateIsIgnored: a target of an older commit offered after a newer
// one (the daemon's resync of the previous commit racing with the new commit) runs nothing:
// the branch did not move back.
func TestOlderTargetOfferedLateIsIgnored(t *testing.T) {
	f := newFixture(t, true)
	older, newer := f.commit("c1", "release 1.0", "1.0"), f.commit("c2", "release 2.0", "2.0")
	older.Generation, newer.Generation = 1, 2
	f.sync(newer)
	f.waitFor("web#1", Completed)
	f.sync(older)
	f.settle()
	assert.Len(t, f.executions(), 1, "the older commit ran")
	assert.Equal(t, "registry.example/web:2.0", f.image())
}
