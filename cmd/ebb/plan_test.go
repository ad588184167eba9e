package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"

	"ebb.dev/ebb/internal/ssa"
	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/planner"
	"ebb.dev/ebb/reconciler"
)

// copyRepo copies a repository to a temporary directory, so a test can change it.
func copyRepo(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.CopyFS(dir, os.DirFS(src)))
	return dir
}

// applyStage applies a stage's release as the reconciler would (server-side apply as "ebb",
// its namespace first).
func applyStage(t *testing.T, dir, pipeline, stage string) {
	t.Helper()
	ctx := context.Background()
	repo := planner.NewRepo(os.DirFS(dir))
	pipelines, err := planner.Load(repo, planner.DefaultOptions())
	require.NoError(t, err)
	var rel *planner.Release
	for _, p := range pipelines {
		if p.Metadata.Name == pipeline {
			rel, err = planner.NewRenderer(planner.DefaultOptions()).Render(repo, p, stage)
			require.NoError(t, err)
		}
	}
	require.NotNil(t, rel)
	client, err := dynamic.NewForConfig(cluster.Config)
	require.NoError(t, err)
	dc, err := discovery.NewDiscoveryClientForConfig(cluster.Config)
	require.NoError(t, err)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": rel.Namespace}}}
	for _, obj := range append([]*unstructured.Unstructured{ns}, rel.Objects.Decode()...) {
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		require.NoError(t, err)
		var ri dynamic.ResourceInterface = client.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = client.Resource(m.Resource).Namespace(obj.GetNamespace())
		}
		_, err = ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "ebb", Force: true})
		require.NoError(t, err)
	}
}

// TestPlan plans the rolling-upgrade example's dev stage: created on a fresh cluster (exit 3),
// unchanged once applied (exit 0), a one-line image diff after a new tag (exit 3).
func TestPlan(t *testing.T) {
	dir := copyRepo(t, "../../examples/rolling-upgrade")
	args := []string{"plan", "--repo", dir, "--kubeconfig", cluster.Kubeconfig, "--stage", "dev"}

	code, stdout, stderr := ebb(t, args...)
	assert.Equal(t, exitChanges, code, stderr)
	assert.Regexp(t, `^pipeline rolling-upgrade-example, stage dev \(cluster dev, namespace web-dev, release sha256:[0-9a-f]{12}, enabled\)
  Namespace/web-dev created
  Service/web-dev/web created
  Deployment/web-dev/web created
$`, stdout)

	applyStage(t, dir, "rolling-upgrade-example", "dev")
	code, stdout, stderr = ebb(t, args...)
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "  Namespace/web-dev unchanged\n  Service/web-dev/web unchanged\n  Deployment/web-dev/web unchanged\n")

	pipeline := filepath.Join(dir, "pipelines/web.yaml")
	data, err := os.ReadFile(pipeline)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(pipeline, []byte(strings.Replace(string(data), `tag: "1.4.2"`, `tag: "1.4.3"`, 1)), 0o600))
	code, stdout, stderr = ebb(t, append(args, "-o", "json")...)
	assert.Equal(t, exitChanges, code, stderr)
	var plans []planner.Plan
	require.NoError(t, json.Unmarshal([]byte(stdout), &plans))
	require.Len(t, plans, 1)
	require.Len(t, plans[0].Changes, 3)
	deploy := plans[0].Changes[2]
	assert.Equal(t, planner.Configured, deploy.Action)
	var changed []string
	for _, l := range strings.Split(deploy.Diff, "\n") {
		if (strings.HasPrefix(l, "-") || strings.HasPrefix(l, "+")) && !strings.HasPrefix(l, "---") && !strings.HasPrefix(l, "+++") {
			changed = append(changed, l)
		}
	}
	assert.Equal(t, []string{
		"-      - image: registry.example.com/team/web:1.4.2",
		"+      - image: registry.example.com/team/web:1.4.3",
	}, changed)
}

func TestPlanSelection(t *testing.T) {
	dir := "../../examples/blue-green"
	tests := []struct {
		name   string
		args   []string
		code   int
		stages []string
		stderr string
	}{
		{"every stage", nil, exitChanges, []string{"dev", "prod"}, ""},
		{"by namespace", []string{"-n", "shop"}, exitChanges, []string{"prod"}, ""},
		{"unknown pipeline", []string{"--pipeline", "nope"}, 1, nil, "error: no valid pipeline \"nope\" in the repository\n"},
		{"unknown stage", []string{"--stage", "qa"}, 1, nil, "error: no stage matches --stage \"qa\" --namespace \"\"\n"},
		{"missing repo", []string{"--repo", "no-such-dir"}, 1, nil, "error: repository \"no-such-dir\" is neither a directory nor a Git URL\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"plan", "--repo", dir, "--kubeconfig", cluster.Kubeconfig, "-o", "yaml"}, tt.args...)
			code, stdout, stderr := ebb(t, args...)
			assert.Equal(t, tt.code, code, stderr)
			assert.Equal(t, tt.stderr, stderr)
			var stages []string
			for _, l := range strings.Split(stdout, "\n") {
				if s, ok := strings.CutPrefix(l, "  stage: "); ok {
					stages = append(stages, s)
				}
			}
			assert.Equal(t, tt.stages, stages)
		})
	}
}

// TestPlanGitURL plans from a Git URL, cloned the way the daemon clones.
func TestPlanGitURL(t *testing.T) {
	dir := copyRepo(t, "../../examples/blue-green")
	for _, args := range [][]string{
		{"init", "-q", "-b", "main"},
		{"add", "."},
		{"-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "blue-green"},
	} {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, string(out))
	}
	code, stdout, stderr := ebb(t, "plan", "--repo", "file://"+dir, "--kubeconfig", cluster.Kubeconfig, "--stage", "dev")
	assert.Equal(t, exitChanges, code, stderr)
	assert.Contains(t, stdout, "pipeline blue-green-example, stage dev (cluster dev, namespace shop-dev,")
	// The stage is blue-green: the release runs as a color, with a preview Service.
	assert.Regexp(t, `  Deployment/shop-dev/shop-[0-9a-f]{10} created\n`, stdout)
	assert.Contains(t, stdout, "  Service/shop-dev/shop-preview created\n")
}

// TestPlanWritesNothing checks that planning leaves every object's resourceVersion as it was.
func TestPlanWritesNothing(t *testing.T) {
	dir := copyRepo(t, "../../planner/testdata/argocd-example-apps")
	applyStage(t, dir, "guestbook", "dev")
	client, err := dynamic.NewForConfig(cluster.Config)
	require.NoError(t, err)
	// Namespaces other tests left terminating change on their own; they are not the plan's.
	terminating := map[string]bool{}
	versions := func() map[string]string {
		out := map[string]string{}
		namespaces, err := client.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).List(context.Background(), metav1.ListOptions{})
		require.NoError(t, err)
		for _, ns := range namespaces.Items {
			if ns.GetDeletionTimestamp() != nil {
				terminating[ns.GetName()] = true
			}
		}
		for _, gvr := range []schema.GroupVersionResource{
			{Version: "v1", Resource: "namespaces"}, {Version: "v1", Resource: "services"},
			{Group: "apps", Version: "v1", Resource: "deployments"}, {Version: "v1", Resource: "configmaps"},
		} {
			list, err := client.Resource(gvr).List(context.Background(), metav1.ListOptions{})
			require.NoError(t, err)
			for _, o := range list.Items {
				if terminating[o.GetNamespace()] || gvr.Resource == "namespaces" && terminating[o.GetName()] {
					continue
				}
				out[gvr.Resource+"/"+o.GetNamespace()+"/"+o.GetName()] = o.GetResourceVersion()
			}
		}
		return out
	}
	waitRolledOut(t, client, "guestbook-dev", "guestbook-ui")
	before := versions()
	code, _, stderr := ebb(t, "plan", "--repo", dir, "--kubeconfig", cluster.Kubeconfig)
	assert.Equal(t, exitChanges, code, stderr, "kustomize-guestbook and sock-shop are not applied")
	after := versions()
	for k, v := range before {
		parts := strings.SplitN(k, "/", 3) // resource/namespace/name
		if terminating[parts[1]] || parts[0] == "namespaces" && terminating[parts[2]] {
			continue // began terminating during the plan, at another test's request
		}
		assert.Equal(t, v, after[k], k)
	}
	for k := range after {
		_, existed := before[k]
		assert.True(t, existed, "plan created %s", k)
	}
}

// waitRolledOut waits until a Deployment's controller is done with it, so nothing but the test
// changes the cluster.
func waitRolledOut(t *testing.T, client dynamic.Interface, ns, name string) {
	t.Helper()
	deployments := client.Resource(schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}).Namespace(ns)
	require.Eventually(t, func() bool {
		d, err := deployments.Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		observed, _, _ := unstructured.NestedInt64(d.Object, "status", "observedGeneration")
		available, _, _ := unstructured.NestedInt64(d.Object, "status", "availableReplicas")
		replicas, _, _ := unstructured.NestedInt64(d.Object, "spec", "replicas")
		return observed == d.GetGeneration() && available == replicas
	}, 30*time.Second, 50*time.Millisecond, "Deployment %s/%s rolls out", ns, name)
}

// TestPlanPrunesTheInventory: "to be pruned" is what the daemon would prune, the stage's
// inventory (from its ledger) minus the release; never ebb's own records or objects that only
// carry the stage's labels. --pipeline plans one pipeline whatever is wrong with the others.
func TestPlanPrunesTheInventory(t *testing.T) {
	ctx := context.Background()
	dir := copyRepo(t, "../../planner/testdata/argocd-example-apps")
	dyn, err := dynamic.NewForConfig(cluster.Config)
	require.NoError(t, err)
	top, err := testcluster.ModuleRoot()
	require.NoError(t, err)
	require.NoError(t, reconciler.InstallCRDs(ctx, dyn, filepath.Join(top, "charts", "ebb", "crds")))
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	records, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "records-"}}, metav1.CreateOptions{})
	require.NoError(t, err)

	applyStage(t, dir, "kustomize-guestbook", "dev")
	repo := planner.NewRepo(os.DirFS(dir))
	pipelines, err := planner.Load(repo, planner.DefaultOptions())
	require.NoError(t, err)
	var rel *planner.Release
	for _, p := range pipelines {
		if p.Metadata.Name == "kustomize-guestbook" {
			rel, err = planner.NewRenderer(planner.DefaultOptions()).Render(repo, p, "dev")
			require.NoError(t, err)
		}
	}
	store := reconciler.NewStore(dyn, records.Name)
	ledger, err := store.Ledger(ctx, "kustomize-guestbook", "dev")
	require.NoError(t, err)
	ledger.Status.Inventory = ssa.InventoryOf(rel.Objects.Decode())
	require.NoError(t, store.SaveLedger(ctx, ledger))
	// An object with the stage's labels that ebb never applied is not ebb's to prune.
	_, err = cs.CoreV1().ConfigMaps("kustomize-guestbook-dev").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
		Name: "made-by-hand", Labels: map[string]string{planner.LabelPipeline: "kustomize-guestbook", planner.LabelStage: "dev"},
	}}, metav1.CreateOptions{})
	require.NoError(t, err)

	editFile := func(name, old, new string) {
		path := filepath.Join(dir, name)
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Contains(t, string(data), old)
		require.NoError(t, os.WriteFile(path, []byte(strings.Replace(string(data), old, new, 1)), 0o600))
	}
	editFile("kustomize-guestbook/kustomization.yaml", "- guestbook-ui-svc.yaml\n", "")
	// A broken neighbour does not stop --pipeline.
	editFile("pipelines/sock-shop.yaml", "  service: front-end\n", "  service: front-end\n  strategy: fast\n")

	args := []string{"plan", "--repo", dir, "--kubeconfig", cluster.Kubeconfig, "--records-namespace", records.Name, "--pipeline", "kustomize-guestbook"}
	code, stdout, stderr := ebb(t, args...)
	assert.Equal(t, exitChanges, code, stderr)
	assert.Empty(t, stderr)
	assert.Contains(t, stdout, "  Deployment/kustomize-guestbook-dev/kustomize-guestbook-ui unchanged\n  Service/kustomize-guestbook-dev/kustomize-guestbook-ui to be pruned\n")
	assert.NotContains(t, stdout, "made-by-hand")
	assert.NotContains(t, stdout, "StageLedger")
	assert.Equal(t, 1, strings.Count(stdout, "to be pruned"), stdout)

	// Without --pipeline, the broken pipeline fails the plan, with its location.
	code, _, stderr = ebb(t, args[:len(args)-2]...)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "pipelines/sock-shop.yaml:")
	assert.Contains(t, stderr, `unknown field "strategy"`)
}
