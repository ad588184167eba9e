package charttest

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

// TestStagesOnOtherClusters: dev and prod are each reached through a kubeconfig Secret in
// the daemon's namespace, built as docs/install.md says: a ServiceAccount on the target
// with the chart's deploy ClusterRole, and a token for it. A third cluster's Secret points at
// a closed port: only the stage that uses it fails, with the reason.
func TestStagesOnOtherClusters(t *testing.T) {
	const release, ns = "ebb-multi", "ebb-multi"
	dir := t.TempDir()
	unreachable := filepath.Join(dir, "gone.kubeconfig")
	in := installChart(t, release, ns, func(in *install) {
		// prod gets its ServiceAccount and RBAC before ebb is installed in dev.
		prepareTarget(t, prod, release, ns, true)
		writeTokenKubeconfig(t, prod, release, ns, filepath.Join(dir, "prod.kubeconfig"))
		for _, args := range [][]string{
			{"config", "set-cluster", "gone", fmt.Sprintf("--server=https://127.0.0.1:%d", freePort(t)), "--insecure-skip-tls-verify=true"},
			{"config", "set-credentials", "ebb", "--token=unused"},
			{"config", "set-context", "gone", "--cluster=gone", "--user=ebb"},
			{"config", "use-context", "gone"},
		} {
			out, err := kubectl(unreachable, "", args...)
			require.NoError(t, err, out)
		}
		createKubeconfigSecret(t, ns, "prod-kubeconfig", filepath.Join(dir, "prod.kubeconfig"))
		createKubeconfigSecret(t, ns, "gone-kubeconfig", unreachable)
	},
		"clusters[0].name=dev", "clusters[0].kubeconfigSecret.name=dev-kubeconfig",
		"clusters[1].name=prod", "clusters[1].kubeconfigSecret.name=prod-kubeconfig",
		"clusters[2].name=gone", "clusters[2].kubeconfigSecret.name=gone-kubeconfig",
	)
	// dev is also the home cluster: the chart made the ServiceAccount and its ClusterRole.
	prepareTarget(t, dev, release, ns, false)
	writeTokenKubeconfig(t, dev, release, ns, filepath.Join(dir, "dev.kubeconfig"))
	createKubeconfigSecret(t, ns, "dev-kubeconfig", filepath.Join(dir, "dev.kubeconfig"))

	d := in.startDaemon()
	files := pipelineFiles("multi", "1.0", false, [3]string{"dev", "dev", "multi-dev"}, [3]string{"prod", "prod", "multi-prod"})
	for k, v := range pipelineFiles("reach", "1.0", false, [3]string{"dev", "dev", "reach-dev"}, [3]string{"far", "gone", "reach-far"}) {
		files[k] = v
	}
	sha := in.commit(d, "two pipelines", files)

	in.waitExecution("multi", sha, reconciler.Completed)
	ctx := context.Background()
	for _, c := range []*testcluster.Cluster{dev, prod} {
		ns := "multi-" + c.Name
		dep, err := kubernetes.NewForConfigOrDie(c.Config).AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		require.NoError(t, err, c.Name)
		assert.Equal(t, "registry.example/multi:1.0", dep.Spec.Template.Spec.Containers[0].Image, c.Name)
	}

	// The unreachable cluster is waited for, in the same execution: a failure of the
	// cluster, not of the release.
	x := in.waitExecution("reach", sha, reconciler.Waiting)
	assert.Equal(t, "far", x.Status.Stage)
	assert.Equal(t, reconciler.FailureWaiting, x.Status.Failure)
	stages := map[string]reconciler.StageRecord{}
	for _, s := range x.Status.Stages {
		stages[s.Name] = s
	}
	assert.Equal(t, reconciler.Completed, stages["dev"].Status, "the reachable stage went on")
	assert.Equal(t, reconciler.Running, stages["far"].Status)
	assert.Contains(t, x.Status.Comment, "reach-far")
	assert.Contains(t, x.Status.Comment, "connection refused")
	assert.Contains(t, x.Status.Comment, "trying again in")

	assert.Empty(t, d.Lines("forbidden"), "the chart's RBAC and the targets' must allow every request")
}

// prepareTarget gives cluster c what docs/install.md asks of a target cluster: the namespace
// and ServiceAccount (unless the chart made them: create false) and the chart's deploy
// ClusterRole bound to that account.
func prepareTarget(t *testing.T, c *testcluster.Cluster, release, ns string, create bool) {
	t.Helper()
	if create {
		for _, args := range [][]string{{"create", "namespace", ns}, {"-n", ns, "create", "serviceaccount", release}} {
			out, err := kubectl(c.Kubeconfig, "", args...)
			require.NoError(t, err, out)
		}
		rbac, err := helm("template", release, chartDir, "--namespace", ns, "--set", "git.url=unused", "--show-only", "templates/rbac-deploy.yaml")
		require.NoError(t, err, rbac)
		out, err := kubectl(c.Kubeconfig, rbac, "apply", "-f", "-")
		require.NoError(t, err, out)
	}
}

// writeTokenKubeconfig writes a kubeconfig for the ServiceAccount ns/name of cluster c, with
// a token from the TokenRequest API, using kubectl only.
func writeTokenKubeconfig(t *testing.T, c *testcluster.Cluster, name, ns, path string) {
	t.Helper()
	token, err := kubectl(c.Kubeconfig, "", "-n", ns, "create", "token", name, "--duration=24h")
	require.NoError(t, err, token)
	for _, args := range [][]string{
		{"config", "set-cluster", c.Name, "--server=" + c.Config.Host, "--certificate-authority=" + filepath.Join(c.Dir, "ca.crt"), "--embed-certs=true"},
		{"config", "set-credentials", "ebb", "--token=" + strings.TrimSpace(token)},
		{"config", "set-context", c.Name, "--cluster=" + c.Name, "--user=ebb"},
		{"config", "use-context", c.Name},
	} {
		out, err := kubectl(path, "", args...)
		require.NoError(t, err, out)
	}
}

// createKubeconfigSecret stores a kubeconfig file under key kubeconfig in the dev cluster.
func createKubeconfigSecret(t *testing.T, ns, name, file string) {
	t.Helper()
	out, err := kubectl(dev.Kubeconfig, "", "-n", ns, "create", "secret", "generic", name, "--from-file=kubeconfig="+file)
	require.NoError(t, err, out)
}
