package charttest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/reconciler"
)

// TestTwoReleasesInOneCluster installs the chart twice in the dev cluster, under the same
// release name in two namespaces, each allowed to deploy to its own tenant namespace only, with
// two replicas (and so a PodDisruptionBudget). Both installs succeed; each daemon, with only its
// own release's RBAC, releases its pipeline; neither release's account may write in the other's
// tenant namespace; and each approval policy checks its own release's approvals only.
func TestTwoReleasesInOneCluster(t *testing.T) {
	ctx := context.Background()
	type tenant struct {
		ns, deployTo string
		in           *install
	}
	tenants := []*tenant{{ns: "ebb-a", deployTo: "tenant-a"}, {ns: "ebb-b", deployTo: "tenant-b"}}
	for _, tn := range tenants {
		tn.in = installChart(t, "ebb", tn.ns, func(*install) {
			out, err := kubectl(dev.Kubeconfig, "", "create", "namespace", tn.deployTo)
			require.NoError(t, err, out)
		}, "rbac.scope=namespaces", "rbac.namespaces={"+tn.deployTo+"}", "replicaCount=2")
	}

	admin := kubernetes.NewForConfigOrDie(dev.Config)
	for _, tn := range tenants {
		name := "ebb-" + tn.ns
		_, err := admin.RbacV1().ClusterRoles().Get(ctx, name+"-namespaces", metav1.GetOptions{})
		assert.NoError(t, err, "each release has its own ClusterRole")
		_, err = admin.RbacV1().RoleBindings(tn.deployTo).Get(ctx, name+"-deploy", metav1.GetOptions{})
		assert.NoError(t, err)
		_, err = admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, name+"-approvals", metav1.GetOptions{})
		assert.NoError(t, err, "each release has its own approval policy")
		pdb, err := admin.PolicyV1().PodDisruptionBudgets(tn.ns).Get(ctx, "ebb", metav1.GetOptions{})
		require.NoError(t, err, "replicaCount 2 brings a PodDisruptionBudget")
		assert.Equal(t, 1, pdb.Spec.MinAvailable.IntValue())
		assert.Eventually(t, func() bool {
			pdb, err := admin.PolicyV1().PodDisruptionBudgets(tn.ns).Get(ctx, "ebb", metav1.GetOptions{})
			return err == nil && pdb.Status.ExpectedPods == 2 && pdb.Status.DisruptionsAllowed == 1
		}, 30*time.Second, 200*time.Millisecond, "the budget selects the release's two pods, and only them")
	}

	// Each daemon deploys its pipeline into its own tenant namespace with its own RBAC.
	for _, tn := range tenants {
		d := tn.in.startDaemon()
		sha := tn.in.commit(d, "release 1.0", pipelineFiles("app", "1.0", false, [3]string{"dev", "local", tn.deployTo}))
		tn.in.waitExecution("app", sha, reconciler.Completed)
		assert.Equal(t, "registry.example/app:1.0", image(t, tn.in, tn.deployTo))
		assert.Empty(t, d.Lines("forbidden"), "release %s: its own RBAC allows every request", tn.ns)
	}

	// Neither account may write in the other's tenant namespace.
	for i, tn := range tenants {
		other := tenants[1-i]
		sa := kubernetes.NewForConfigOrDie(serviceAccountConfig(dev, tn.ns, "ebb"))
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "probe"}}
		_, err := sa.CoreV1().ConfigMaps(tn.deployTo).Create(ctx, cm, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		assert.NoError(t, err, "%s may write in %s", tn.ns, tn.deployTo)
		_, err = sa.CoreV1().ConfigMaps(other.deployTo).Create(ctx, cm, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		assert.True(t, apierrors.IsForbidden(err), "%s may not write in %s: %v", tn.ns, other.deployTo, err)
	}

	// A new approval that already carries a decision is denied by its own release's policy
	// only; outside the releases' namespaces no ebb policy applies.
	approval := func(ns string) string {
		return fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
kind: Approval
metadata: {name: app-1-prod, namespace: %s}
spec:
  execution: app-1
  pipeline: app
  stage: prod
  approvers: [alice]
  expiresAt: "2030-01-01T00:00:00Z"
  decision: {approved: true, by: alice, at: "2029-01-01T00:00:00Z"}
`, ns)
	}
	for i, tn := range tenants {
		out, err := kubectl(dev.Kubeconfig, approval(tn.ns), "create", "-f", "-")
		require.Error(t, err, out)
		assert.Contains(t, out, "ValidatingAdmissionPolicy 'ebb-"+tn.ns+"-approvals'")
		assert.NotContains(t, out, "ebb-"+tenants[1-i].ns+"-approvals", "the other release's policy does not check this namespace")
	}
	out, err := kubectl(dev.Kubeconfig, approval("tenant-a"), "create", "--dry-run=server", "-f", "-")
	assert.NoError(t, err, "no release keeps approvals in tenant-a: %s", out)
}
