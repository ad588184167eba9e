package charttest

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"ebb.dev/ebb/reconciler"
)

// TestInstallAndRollbackWithChartRBAC installs the chart as the quickstart does, checks that
// the API server took every object and the pod (simulated) meets the restricted Pod Security
// Standard, then runs the real daemon with the Deployment's arguments and nothing but the
// chart's RBAC through a rolling release and a rollback that prunes what the bad release
// added. No request may be forbidden.
func TestInstallAndRollbackWithChartRBAC(t *testing.T) {
	ctx := context.Background()
	in := installChart(t, "ebb", "ebb-system", nil)

	dep, err := in.admin.AppsV1().Deployments("ebb-system").Get(ctx, "ebb", metav1.GetOptions{})
	require.NoError(t, err)
	assert.EqualValues(t, 1, dep.Status.ReadyReplicas, "helm --wait saw the pod Ready")
	_, err = in.admin.RbacV1().ClusterRoles().Get(ctx, "ebb-ebb-system-deploy", metav1.GetOptions{})
	assert.NoError(t, err)
	_, err = in.admin.RbacV1().ClusterRoleBindings().Get(ctx, "ebb-ebb-system-deploy", metav1.GetOptions{})
	assert.NoError(t, err)
	_, err = in.admin.RbacV1().Roles("ebb-system").Get(ctx, "ebb", metav1.GetOptions{})
	assert.NoError(t, err)
	_, err = in.admin.CoreV1().Services("ebb-system").Get(ctx, "ebb", metav1.GetOptions{})
	assert.NoError(t, err)
	crds := dynamic.NewForConfigOrDie(dev.Config).Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	for _, name := range []string{"executions.ebb.dev", "stageledgers.ebb.dev", "pipelines.ebb.dev", "approvals.ebb.dev"} {
		_, err := crds.Get(ctx, name, metav1.GetOptions{})
		assert.NoError(t, err, name)
	}
	out, err := helm("--kubeconfig", dev.Kubeconfig, "status", "ebb", "--namespace", "ebb-system")
	require.NoError(t, err, out)
	assert.Contains(t, out, "kubectl -n ebb-system get pipelines,executions,stageledgers", "NOTES.txt")

	d := in.startDaemon()
	require.Equal(t, http.StatusUnauthorized, d.hook("wrong-secret"), "the webhook checks the mounted secret")
	stage := [3]string{"dev", "local", "story-dev"}
	good := in.commit(d, "release 1.0", pipelineFiles("story", "1.0", false, stage))
	in.waitExecution("story", good, reconciler.Completed)
	assert.Equal(t, "registry.example/story:1.0", image(t, in, "story-dev"))

	bad := in.commit(d, "release 2.0, broken, with a ConfigMap", pipelineFiles("story", "2.0-broken", true, stage))
	x := in.waitExecution("story", bad, reconciler.RollbackCompleted)
	assert.Contains(t, x.Status.Comment, "CrashLoopBackOff", "fail-fast, with the RBAC the chart grants")
	rb, err := in.store.GetExecution(ctx, reconciler.ObjectName("story_dev_rollback#1"))
	require.NoError(t, err)
	assert.Equal(t, reconciler.Completed, rb.Status.Phase)
	assert.Equal(t, "registry.example/story:1.0", image(t, in, "story-dev"))
	_, err = in.admin.CoreV1().ConfigMaps("story-dev").Get(ctx, "extra", metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "the rollback pruned the ConfigMap the bad release added: %v", err)

	// The Pipeline object says so, written with the chart's RBAC.
	assert.Eventually(t, func() bool {
		list, err := in.store.ListPipelines(ctx)
		if err != nil || len(list) != 1 {
			return false
		}
		ready := meta.FindStatusCondition(list[0].Status.Conditions, reconciler.ConditionReady)
		return ready != nil && ready.Status == metav1.ConditionFalse && ready.Reason == "RollbackCompleted" &&
			list[0].Status.LastPlannedCommit.SHA == bad && len(list[0].Status.Stages) == 1 && len(list[0].Status.Stages[0].Quarantined) == 1
	}, 30*time.Second, 100*time.Millisecond, "Pipeline story: Ready=False, RollbackCompleted, the bad release quarantined")

	events, err := in.admin.CoreV1().Events("story-dev").List(ctx, metav1.ListOptions{FieldSelector: "reason=RolledBack"})
	require.NoError(t, err)
	assert.NotEmpty(t, events.Items, "an Event on the Deployment in the target namespace")
	events, err = in.admin.CoreV1().Events("ebb-system").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Execution"})
	require.NoError(t, err)
	assert.NotEmpty(t, events.Items, "Events on executions in the daemon's namespace")
	lease, err := in.admin.CoordinationV1().Leases("ebb-system").Get(ctx, "ebb-leader", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "ebb-pod-0", *lease.Spec.HolderIdentity)

	assert.Empty(t, d.Lines("forbidden"), "the chart's RBAC must allow every request the daemon makes")
	for _, secret := range []string{gitPassword, hookSecret} {
		assert.Empty(t, d.Lines(secret), "a secret reached the log")
	}
}

// image returns the image of the web Deployment in namespace ns of the dev cluster.
func image(t *testing.T, in *install, ns string) string {
	t.Helper()
	d, err := in.admin.AppsV1().Deployments(ns).Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		return "none: " + err.Error()
	}
	return d.Spec.Template.Spec.Containers[0].Image
}
