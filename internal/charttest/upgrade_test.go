package charttest

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// previousChart is chart 0.1.0 as it was packaged, with its CRDs in crds/, which Helm installs
// once and never upgrades. Its Execution CRD has no status.history, which later versions added.
const previousChart = "testdata/ebb-0.1.0.tgz"

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// TestUpgradeFromPreviousChart installs chart 0.1.0 in the prod cluster (which has no CRDs of
// ebb yet), then upgrades to this chart as docs/install.md says: the first upgrade from a chart
// whose CRDs were in crds/ takes them over with --take-ownership, and from then on every
// `helm upgrade` upgrades them. Uninstalling leaves them, and so every record, in place.
func TestUpgradeFromPreviousChart(t *testing.T) {
	ctx := context.Background()
	const release, ns = "ebb", "ebb-upgrade"
	kc := []string{"--kubeconfig", prod.Kubeconfig}
	run := func(args ...string) (string, error) { return helm(append(kc, args...)...) }
	crds := dynamic.NewForConfigOrDie(prod.Config).Resource(crdGVR)

	out, err := run("install", release, previousChart, "--namespace", ns, "--create-namespace", "--set", "git.url=https://git.example.com/deploy.git", "--wait", "--timeout", "60s")
	require.NoError(t, err, out)
	t.Cleanup(func() { _, _ = run("uninstall", release, "--namespace", ns, "--wait") })
	old, err := crds.Get(ctx, "executions.ebb.dev", metav1.GetOptions{})
	require.NoError(t, err)
	require.False(t, hasStatusHistory(t, old), "chart 0.1.0's Execution CRD has no status.history")

	// A plain upgrade cannot take objects it did not create: Helm says so and changes nothing.
	out, err = run("upgrade", release, chartDir, "--namespace", ns, "--set", "git.url=https://git.example.com/deploy.git", "--wait", "--timeout", "60s")
	require.Error(t, err, out)
	assert.Contains(t, out, `CustomResourceDefinition "approvals.ebb.dev" in namespace "" exists and cannot be imported into the current release`)
	assert.Contains(t, out, "invalid ownership metadata")

	// The documented first upgrade.
	out, err = run("upgrade", release, chartDir, "--namespace", ns, "--set", "git.url=https://git.example.com/deploy.git", "--take-ownership", "--wait", "--timeout", "60s")
	require.NoError(t, err, out)
	checkCRDsAreTheChartsAndKept(t, crds, release, ns)
	admin := kubernetes.NewForConfigOrDie(prod.Config)
	_, err = admin.RbacV1().ClusterRoles().Get(ctx, "ebb-deploy", metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "0.1.0's ClusterRole, named without the namespace, is gone: %v", err)
	_, err = admin.RbacV1().ClusterRoles().Get(ctx, "ebb-"+ns+"-deploy", metav1.GetOptions{})
	assert.NoError(t, err)

	// From now on a plain upgrade upgrades them: a CRD changed by hand is put back.
	out, err = editCRDByHand(prod.Kubeconfig, "executions.ebb.dev")
	require.NoError(t, err, out)
	out, err = run("upgrade", release, chartDir, "--namespace", ns, "--set", "git.url=https://git.example.com/deploy.git", "--set", "logLevel=debug", "--wait", "--timeout", "60s")
	require.NoError(t, err, out)
	checkCRDsAreTheChartsAndKept(t, crds, release, ns)

	out, err = run("uninstall", release, "--namespace", ns, "--wait")
	require.NoError(t, err, out)
	for _, name := range crdNames {
		_, err := crds.Get(ctx, name, metav1.GetOptions{})
		assert.NoError(t, err, "%s is kept on uninstall", name)
	}
}

var crdNames = []string{"approvals.ebb.dev", "executions.ebb.dev", "pipelines.ebb.dev", "stageledgers.ebb.dev"}

// hasStatusHistory reports whether the Execution CRD's first version has status.history.
func hasStatusHistory(t *testing.T, crd *unstructured.Unstructured) bool {
	t.Helper()
	versions, _, err := unstructured.NestedSlice(crd.Object, "spec", "versions")
	require.NoError(t, err)
	require.NotEmpty(t, versions)
	_, found, err := unstructured.NestedMap(versions[0].(map[string]any), "schema", "openAPIV3Schema", "properties", "status", "properties", "history")
	require.NoError(t, err)
	return found
}

// editCRDByHand edits the Execution CRD by hand: it drops the history field from its schema.
func editCRDByHand(kubeconfig, name string) (string, error) {
	patch := `[{"op": "remove", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/history"}]`
	return kubectl(kubeconfig, "", "patch", "crd", name, "--type=json", "-p", patch)
}

// checkCRDsAreTheChartsAndKept: each CRD in the cluster has exactly the schema of the file in
// crds/, belongs to the release, and is marked to be kept.
func checkCRDsAreTheChartsAndKept(t *testing.T, crds dynamic.ResourceInterface, release, ns string) {
	t.Helper()
	ctx := context.Background()
	for _, name := range crdNames {
		live, err := crds.Get(ctx, name, metav1.GetOptions{})
		require.NoError(t, err)
		data, err := os.ReadFile(filepath.Join(chartDir, "crds", name[:len(name)-len(".ebb.dev")]+".yaml"))
		require.NoError(t, err)
		var file map[string]any
		require.NoError(t, yaml.Unmarshal(data, &file))
		wantVersions, _, _ := unstructured.NestedSlice(file, "spec", "versions")
		gotVersions, _, _ := unstructured.NestedSlice(live.Object, "spec", "versions")
		assert.Equal(t, asJSON(t, wantVersions), asJSON(t, gotVersions), "%s: the chart's versions and schema", name)
		assert.Equal(t, "keep", live.GetAnnotations()["helm.sh/resource-policy"], name)
		assert.Equal(t, release, live.GetAnnotations()["meta.helm.sh/release-name"], name)
		assert.Equal(t, ns, live.GetAnnotations()["meta.helm.sh/release-namespace"], name)
		assert.Equal(t, "Helm", live.GetLabels()["app.kubernetes.io/managed-by"], name)
	}
	x, err := crds.Get(ctx, "executions.ebb.dev", metav1.GetOptions{})
	require.NoError(t, err)
	assert.True(t, hasStatusHistory(t, x), "the upgraded Execution CRD has status.history")
}

// asJSON round-trips v through JSON, so that numbers read from YAML and from the API server
// compare equal.
func asJSON(t *testing.T, v any) any {
	t.Helper()
	data, err := json.Marshal(v)
	require.NoError(t, err)
	var out any
	require.NoError(t, json.Unmarshal(data, &out))
	return out
}
