package planner

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"ebb.dev/ebb/internal/ssa"
)

// stageRepo copies an example repository to a temporary directory, so a test can change it.
func stageRepo(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.CopyFS(dir, os.DirFS(src)))
	return dir
}

// renderStage loads the repository at dir and renders one stage of its only pipeline.
func renderStage(t *testing.T, r *Renderer, dir, stage string) *Release {
	t.Helper()
	repo := NewRepo(os.DirFS(dir))
	pipelines, err := Load(repo, testClusters)
	require.NoError(t, err)
	require.Len(t, pipelines, 1)
	rel, err := r.Render(repo, pipelines[0], stage)
	require.NoError(t, err)
	return rel
}

// editFile replaces old with new in a file of the repository.
func editFile(t *testing.T, dir, name, old, new string) {
	t.Helper()
	path := filepath.Join(dir, name)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Contains(t, string(data), old)
	require.NoError(t, os.WriteFile(path, []byte(strings.Replace(string(data), old, new, 1)), 0o600))
}

// apply writes a release the way the reconciler does, with the apply engine, then waits until
// its Deployment has rolled out, so the cluster is quiet while the test plans. It returns the
// stage's inventory as the reconciler would record it.
func apply(t testing.TB, d *Differ, rel *Release) ssa.Inventory {
	t.Helper()
	ctx := context.Background()
	ns := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": rel.Namespace},
	}}
	if !createsNamespace(rel, rel.Namespace) {
		_, err := d.client.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).
			Apply(ctx, rel.Namespace, ns, metav1.ApplyOptions{FieldManager: "ebb"})
		require.NoError(t, err)
	}
	_, err := d.ssa.Apply(ctx, rel.Objects.Decode(), ssa.ApplyOptions{Owner: ssa.Owner{Pipeline: rel.Pipeline, Stage: rel.Stage}})
	require.NoError(t, err)
	deploy := findObject(rel.Objects.Decode(), "Deployment", rel.Deployment)
	ri := resourceOf(t, d, deploy)
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		live, err := ri.Get(ctx, deploy.GetName(), metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		observed, _, _ := unstructured.NestedInt64(live.Object, "status", "observedGeneration")
		updated, _, _ := unstructured.NestedInt64(live.Object, "status", "updatedReplicas")
		available, _, _ := unstructured.NestedInt64(live.Object, "status", "availableReplicas")
		replicas, _, _ := unstructured.NestedInt64(live.Object, "spec", "replicas")
		return observed == live.GetGeneration() && updated == replicas && available == replicas, nil
	})
	require.NoError(t, err, "Deployment %s rolls out", deploy.GetName())
	return ssa.InventoryOf(rel.Objects.Decode())
}

// resourceOf returns the client of an object's resource.
func resourceOf(t testing.TB, d *Differ, obj *unstructured.Unstructured) dynamic.ResourceInterface {
	t.Helper()
	mapping, err := d.ssa.Mapping(obj.GroupVersionKind())
	require.NoError(t, err)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		return d.client.Resource(mapping.Resource).Namespace(obj.GetNamespace())
	}
	return d.client.Resource(mapping.Resource)
}

// actions returns "Kind/ns/name action" for each change, in plan order.
func actions(p *Plan) []string {
	var out []string
	for _, c := range p.Changes {
		out = append(out, c.Object.String()+" "+string(c.Action))
	}
	return out
}

// resourceVersions returns the resourceVersion of every object the release names.
func resourceVersions(t testing.TB, d *Differ, rel *Release) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, obj := range rel.Objects.Decode() {
		live, err := resourceOf(t, d, obj).Get(context.Background(), obj.GetName(), metav1.GetOptions{})
		if err == nil {
			out[RefOf(obj).String()] = live.GetResourceVersion()
		}
	}
	return out
}

// TestDiffLifecycle plans a release on a fresh cluster (created), after it is applied
// (unchanged), after a new tag (a one-line image diff) and after an object leaves the
// release (to be pruned); planning never changes a resourceVersion.
func TestDiffLifecycle(t *testing.T) {
	ctx := context.Background()
	d, err := NewDiffer(cluster.Config, DefaultDiffOptions())
	require.NoError(t, err)
	dir := stageRepo(t, "../examples/rolling-upgrade")
	r := NewRenderer(testClusters)

	rel := renderStage(t, r, dir, "dev")
	plan, err := d.Diff(ctx, rel, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{
		"Namespace/web-dev created", "Service/web-dev/web created", "Deployment/web-dev/web created",
	}, actions(plan))
	assert.True(t, plan.Changed())

	inventory := apply(t, d, rel)
	before := resourceVersions(t, d, rel)
	plan, err = d.Diff(ctx, rel, inventory)
	require.NoError(t, err)
	assert.Equal(t, []string{
		"Namespace/web-dev unchanged", "Service/web-dev/web unchanged", "Deployment/web-dev/web unchanged",
	}, actions(plan))
	assert.False(t, plan.Changed())
	assert.Equal(t, before, resourceVersions(t, d, rel), "planning writes nothing")

	editFile(t, dir, "pipelines/web.yaml", `tag: "1.4.2"`, `tag: "1.4.3"`)
	retagged := renderStage(t, r, dir, "dev")
	plan, err = d.Diff(ctx, retagged, inventory)
	require.NoError(t, err)
	assert.Equal(t, []string{
		"Namespace/web-dev unchanged", "Service/web-dev/web unchanged", "Deployment/web-dev/web configured",
	}, actions(plan))
	removed, added := changedLines(plan.Changes[2].Diff)
	assert.Equal(t, []string{"-      - image: registry.example.com/team/web:1.4.2"}, removed, plan.Changes[2].Diff)
	assert.Equal(t, []string{"+      - image: registry.example.com/team/web:1.4.3"}, added, plan.Changes[2].Diff)
	assert.Equal(t, before, resourceVersions(t, d, rel), "planning writes nothing")

	editFile(t, dir, "apps/web/base/kustomization.yaml", "- service.yaml\n", "")
	plan, err = d.Diff(ctx, renderStage(t, r, dir, "dev"), inventory)
	require.NoError(t, err)
	assert.Equal(t, []string{
		"Namespace/web-dev unchanged", "Deployment/web-dev/web configured", "Service/web-dev/web to be pruned",
	}, actions(plan))
	assert.Equal(t, before, resourceVersions(t, d, rel), "planning writes nothing")

	// Only the inventory is pruned: an object that merely carries the stage's labels (made by
	// hand, or ebb's own records) is not ebb's to delete.
	plan, err = d.Diff(ctx, renderStage(t, r, dir, "dev"), nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"Namespace/web-dev unchanged", "Deployment/web-dev/web configured"}, actions(plan))
}

// changedLines returns the removed and added lines of a unified diff.
func changedLines(diff string) (removed, added []string) {
	for _, l := range strings.Split(diff, "\n") {
		switch {
		case strings.HasPrefix(l, "---"), strings.HasPrefix(l, "+++"):
		case strings.HasPrefix(l, "-"):
			removed = append(removed, l)
		case strings.HasPrefix(l, "+"):
			added = append(added, l)
		}
	}
	return removed, added
}

// TestDiffMasksSecrets checks that a changed Secret shows as a changed line with its values
// masked, before and after.
func TestDiffMasksSecrets(t *testing.T) {
	ctx := context.Background()
	d, err := NewDiffer(cluster.Config, DefaultDiffOptions())
	require.NoError(t, err)
	dir := stageRepo(t, "../examples/blue-green")
	r := NewRenderer(testClusters)
	rel := renderStage(t, r, dir, "dev")
	inventory := apply(t, d, rel)

	const secret = "bmV3LXNlY3JldC12YWx1ZQ=="
	editFile(t, dir, "apps/shop/base/pull-secret.yaml", "cGxhY2Vob2xkZXI6cGxhY2Vob2xkZXI=", secret)
	plan, err := d.Diff(ctx, renderStage(t, r, dir, "dev"), inventory)
	require.NoError(t, err)
	assert.Equal(t, []string{
		"Namespace/shop-dev unchanged", "Secret/shop-dev/registry-credentials configured",
		"Service/shop-dev/shop unchanged", "Deployment/shop-dev/shop unchanged",
	}, actions(plan))
	diff := plan.Changes[1].Diff
	removed, added := changedLines(diff)
	assert.Equal(t, []string{"-  .dockerconfigjson: '*** (masked)'"}, removed, diff)
	assert.Equal(t, []string{"+  .dockerconfigjson: '*** (masked, changed)'"}, added, diff)
	assert.NotContains(t, diff, secret)
	assert.NotContains(t, diff, "cGxhY2Vob2xkZXI6cGxhY2Vob2xkZXI=")
}

// TestDiffArgoCDExamples plans the real-world manifests on the cluster as written.
func TestDiffArgoCDExamples(t *testing.T) {
	ctx := context.Background()
	d, err := NewDiffer(cluster.Config, DefaultDiffOptions())
	require.NoError(t, err)
	repo := NewRepo(os.DirFS("testdata/argocd-example-apps"))
	pipelines, err := Load(repo, testClusters)
	require.NoError(t, err)
	require.Len(t, pipelines, 3)
	releases, err := NewRenderer(testClusters).RenderAll(repo, pipelines)
	require.NoError(t, err)
	for _, rel := range releases {
		t.Run(rel.Pipeline, func(t *testing.T) {
			plan, err := d.Diff(ctx, rel, nil)
			require.NoError(t, err)
			require.Len(t, plan.Changes, rel.Objects.Len()+1)
			assert.Equal(t, "Namespace/"+rel.Namespace, plan.Changes[0].Object.String(), "the stage's namespace is created first")
			for _, c := range plan.Changes {
				assert.Equal(t, Created, c.Action, c.Object.String())
			}
			inventory := apply(t, d, rel)
			plan, err = d.Diff(ctx, rel, inventory)
			require.NoError(t, err)
			for _, c := range plan.Changes {
				assert.Equal(t, Unchanged, c.Action, "%s\n%s", c.Object, c.Diff)
			}
		})
	}
}
