package charttest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/reconciler"
)

// TestNamespacedRBACDeniesOtherNamespaces installs the chart with rbac.scope namespaces: a
// stage deploying outside the listed namespaces waits, saying the API server's "forbidden", and
// writes nothing there, while a pipeline in an allowed namespace is applied.
func TestNamespacedRBACDeniesOtherNamespaces(t *testing.T) {
	ctx := context.Background()
	in := installChart(t, "ebb-scoped", "ebb-scoped", func(in *install) {
		out, err := kubectl(dev.Kubeconfig, "", "create", "namespace", "team-a")
		require.NoError(t, err, out)
	}, "rbac.scope=namespaces", "rbac.namespaces={team-a}")

	d := in.startDaemon()
	files := pipelineFiles("inside", "1.0", false, [3]string{"dev", "local", "team-a"})
	for k, v := range pipelineFiles("outside", "1.0", false, [3]string{"dev", "local", "team-b"}) {
		files[k] = v
	}
	sha := in.commit(d, "one pipeline inside, one outside", files)

	// Forbidden is ebb's access, which may be granted: the execution waits, it does not fail
	// the release.
	x := in.waitExecution("outside", sha, reconciler.Waiting)
	assert.Equal(t, reconciler.FailureWaiting, x.Status.Failure)
	assert.Contains(t, x.Status.Comment, "forbidden")
	assert.Contains(t, x.Status.Comment, `User "system:serviceaccount:ebb-scoped:ebb-scoped"`)
	assert.Contains(t, x.Status.Comment, "team-b")
	_, err := in.admin.CoreV1().Namespaces().Get(ctx, "team-b", metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "nothing is written outside the allowed namespaces: %v", err)

	// The allowed pipeline completes: ebb watches and prunes per namespace, within its Roles.
	in.waitExecution("inside", sha, reconciler.Completed)
	assert.Equal(t, "registry.example/inside:1.0", image(t, in, "team-a"))
	svc, err := in.admin.CoreV1().Services("team-a").Get(ctx, "web", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "inside", svc.Labels[reconciler.LabelPipeline])
}
