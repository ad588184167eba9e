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
