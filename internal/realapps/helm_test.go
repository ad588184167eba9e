package realapps

import (
	"context"
	"fmt"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/planner"
	"ebb.dev/ebb/reconciler"
)

// podinfoChart is podinfo's Helm chart, as its authors wrote it. A pipeline renders it with
// its own name as the release name, so the chart's fullname (and the Deployment) is the
// pipeline's name.
var podinfoChart = app{dir: "podinfo-chart/charts/podinfo", image: "ghcr.io/stefanprodan/podinfo", tag: "6.14.1"}

// helmPipeline is a pipeline rendering the chart copied to apps/<name>: dev with inline values
// and a values file of the repository, prod with the chart's own values-prod.yaml (Redis and
// an HPA on; the HPA owns the Deployment's replicas, at least replicaCount: 2, which the test
// cluster's HPA reaches without a metrics API), both rolling, rollback on.
func helmPipeline(name, tag string) string {
	return fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata:
  name: %[1]s
spec:
  enabled: true
  input:
    image: %[2]s
    tag: %[3]q
  service: %[1]s
  stages:
  - name: dev
    cluster: dev
    namespace: %[1]s-dev
    helm:
      chart: apps/%[1]s
      values: {replicaCount: 2}
      valuesFiles: [values/%[1]s-dev.yaml]
    verify:
      rollout: {timeout: 5m}
    rollback: true
  - name: prod
    cluster: prod
    namespace: %[1]s
    helm:
      chart: apps/%[1]s
      valuesFiles: [apps/%[1]s/values-prod.yaml]
      values: {replicaCount: 2}
    verify:
      rollout: {timeout: 5m}
    rollback: true
`, name, podinfoChart.image, tag)
}

// releaseHelm commits (and pushes) the Helm pipeline releasing tag, with the dev values file.
func (e *env) releaseHelm(tag, message string) string {
	e.t.Helper()
	require.NoError(e.t, e.repo.WriteFiles(map[string]string{
		"pipelines/" + e.name + ".yaml":  helmPipeline(e.name, tag),
		"values/" + e.name + "-dev.yaml": "ui:\n  message: dev, from a values file\nlogLevel: debug\n",
	}))
	sha, err := e.repo.Commit(message)
	require.NoError(e.t, err)
	require.NoError(e.t, e.repo.Push())
	return sha
}

// TestHelmChartReleases: podinfo's chart, rendered by the daemon from the repository (served
// over smart HTTP), releases through dev and prod and verifies; `ebb plan` then shows nothing
// to change and names the hooks left out; at rest no drift check finds drift or writes
// anything; a release whose pods crash-loop is rolled back by fail-fast, and prod is never
// touched.
func TestHelmChartReleases(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "helm-podinfo", podinfoChart, envOptions{server: true})
	d := e.startDaemon()
	good := e.releaseHelm(podinfoChart.tag, "release podinfo's chart")
	e.requireCompleted(good)

	ctx := context.Background()
	dep, err := e.devCS.AppsV1().Deployments(e.devNS()).Get(ctx, e.name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, int32(2), *dep.Spec.Replicas, "inline values.replicaCount")
	assert.Equal(t, e.name, dep.Labels[planner.LabelPipeline])
	assert.Equal(t, "Helm", dep.Labels["app.kubernetes.io/managed-by"], "the chart's labels")
	assert.Contains(t, dep.Spec.Template.Spec.Containers[0].Command, "--level=debug", "the values file's logLevel")
	_, err = e.prodCS.AppsV1().Deployments(e.prodNS()).Get(ctx, e.name+"-redis", metav1.GetOptions{})
	assert.NoError(t, err, "values-prod.yaml turns Redis on in prod")
	_, err = e.prodCS.AutoscalingV2().HorizontalPodAutoscalers(e.prodNS()).Get(ctx, e.name, metav1.GetOptions{})
	assert.NoError(t, err, "values-prod.yaml turns the HPA on in prod")
	pods, err := e.devCS.CoreV1().Pods(e.devNS()).List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for _, p := range pods.Items {
		assert.NotContains(t, p.Name, "-test-", "a Helm test hook pod was applied")
	}

	out, err := exec.Command(ebbBin, "validate", "--config", e.config, e.repo.Dir).CombinedOutput()
	require.NoError(t, err, "ebb validate:\n%s", out)
	assert.Contains(t, string(out), "1 pipelines valid, 2 stages rendered")

	plan := exec.Command(ebbBin, "plan", "--repo", e.repo.Dir, "--config", e.config,
		"--kubeconfig", e.home.Kubeconfig, "--records-namespace", e.records)
	out, err = plan.CombinedOutput()
	require.NoError(t, err, "ebb plan: nothing to change exits 0:\n%s", out)
	assert.Contains(t, string(out), "note: Helm hook Pod/"+e.name+"-grpc-test-")
	assert.Contains(t, string(out), "is left out: ebb runs no hooks")
	assert.NotContains(t, string(out), " configured")

	assertAtRest(t, e, d)

	prodBefore, err := e.prodCS.AppsV1().Deployments(e.prodNS()).Get(ctx, e.name, metav1.GetOptions{})
	require.NoError(t, err)
	start := time.Now()
	bad := e.releaseHelm(podinfoChart.tag+"-broken", "a release whose pods crash-loop")
	x := e.waitDone(bad, 3*time.Minute)
	require.Equal(t, reconciler.RollbackCompleted, x.Status.Phase, "%s; all: %s", describe(x), e.describeAll())
	t.Logf("commit to ROLLBACK_COMPLETED in %s", time.Since(start).Round(time.Millisecond))
	assert.Contains(t, x.Status.Comment, "CrashLoopBackOff")
	assert.Equal(t, e.imageOf(podinfoChart.tag), image(t, e.devCS, e.devNS(), e.name), "dev's image after the rollback")
	prodAfter, err := e.prodCS.AppsV1().Deployments(e.prodNS()).Get(ctx, e.name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, prodBefore.ResourceVersion, prodAfter.ResourceVersion, "prod's Deployment was written to")
}
