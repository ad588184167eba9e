package planner

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kyaml "sigs.k8s.io/kustomize/kyaml/yaml"
)

// loadOne loads the repository at dir and returns it with the pipeline named name.
func loadOne(t testing.TB, dir, name string) (*Repo, *Pipeline) {
	t.Helper()
	repo := NewRepo(os.DirFS(dir))
	pipelines, err := Load(repo, testClusters)
	require.NoError(t, err)
	for _, p := range pipelines {
		if p.Metadata.Name == name {
			return repo, p
		}
	}
	t.Fatalf("no pipeline %q in %s", name, dir)
	return nil, nil
}

// parseOne parses an inline pipeline.
func parseOne(t *testing.T, yaml string) *Pipeline {
	t.Helper()
	pipelines, err := ParseFile("inline.yaml", []byte(yaml), testClusters)
	require.NoError(t, err)
	require.Len(t, pipelines, 1)
	return pipelines[0]
}

func kinds(objects []*unstructured.Unstructured) []string {
	var out []string
	for _, o := range objects {
		out = append(out, RefOf(o).String())
	}
	return out
}

func TestRenderExamples(t *testing.T) {
	tests := []struct {
		dir, pipeline, stage string
		want                 []string
		replicas             int64
		image                string
	}{
		{"rolling-upgrade", "rolling-upgrade-example", "dev",
			[]string{"Namespace/web-dev", "Service/web-dev/web", "Deployment/web-dev/web"}, 1, "registry.example.com/team/web:1.4.2"},
		{"rolling-upgrade", "rolling-upgrade-example", "prod",
			[]string{"Namespace/web", "Service/web/web", "Deployment/web/web"}, 3, "registry.example.com/team/web:1.4.2"},
		{"blue-green", "blue-green-example", "dev",
			[]string{"Namespace/shop-dev", "Secret/shop-dev/registry-credentials", "Service/shop-dev/shop", "Deployment/shop-dev/shop"}, 1, "registry.example.com/team/shop:2.0.1"},
		{"blue-green", "blue-green-example", "prod",
			[]string{"Namespace/shop", "Secret/shop/registry-credentials", "Service/shop/shop", "Deployment/shop/shop"}, 3, "registry.example.com/team/shop:2.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.pipeline+"/"+tt.stage, func(t *testing.T) {
			repo, p := loadOne(t, filepath.Join("..", "examples", tt.dir), tt.pipeline)
			rel, err := NewRenderer(testClusters).Render(repo, p, tt.stage)
			require.NoError(t, err)
			assert.Equal(t, tt.want, kinds(rel.Objects.Decode()))
			assert.Equal(t, []string{tt.image}, rel.Images)
			assert.Regexp(t, `^sha256:[0-9a-f]{64}$`, rel.Hash)
			for _, o := range rel.Objects.Decode() {
				assert.Equal(t, tt.pipeline, o.GetLabels()[LabelPipeline], o.GetName())
				assert.Equal(t, tt.stage, o.GetLabels()[LabelStage], o.GetName())
			}
			deploy := findObject(rel.Objects.Decode(), "Deployment", rel.Deployment)
			replicas, _, _ := unstructured.NestedInt64(deploy.Object, "spec", "replicas")
			assert.Equal(t, tt.replicas, replicas)
			selector, _, _ := unstructured.NestedStringMap(deploy.Object, "spec", "selector", "matchLabels")
			assert.NotContains(t, selector, LabelStage, "selectors are immutable and stay as written")
		})
	}
}

// TestRenderHashStable checks that formatting, key order and resource order do not change the
// hash, and that a real change does.
func TestRenderHashStable(t *testing.T) {
	p := parseOne(t, `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  manifests: app
  service: web
  input: {image: nginx, tag: "1.28"}
  stages: [{name: dev, cluster: dev, namespace: web-dev}]
`)
	a, err := NewRenderer(testClusters).Render(NewRepo(os.DirFS("testdata/repos/hash-a")), p, "dev")
	require.NoError(t, err)
	b, err := NewRenderer(testClusters).Render(NewRepo(os.DirFS("testdata/repos/hash-b")), p, "dev")
	require.NoError(t, err)
	assert.Equal(t, a.Hash, b.Hash)
	// The hash of a release is the same in every version of ebb: a new one would make every
	// stage's release look new after an upgrade, and deploy it again.
	assert.Equal(t, "sha256:55e72b3df34c8f4689d31e6b07cd04b43fcc4f2f0e8522a2475007ff4ad4b3b7", a.Hash)
	assert.Equal(t, kinds(a.Objects.Decode()), kinds(b.Objects.Decode()))
	assert.Equal(t, []string{"nginx:1.28"}, a.Images)

	p.Spec.Input.Tag = "1.29"
	c, err := NewRenderer(testClusters).Render(NewRepo(os.DirFS("testdata/repos/hash-a")), p, "dev")
	require.NoError(t, err)
	assert.NotEqual(t, a.Hash, c.Hash)
}

// TestRenderPlainDirectory checks a directory without kustomization: its YAML files are the
// resources, values fill placeholders, and only the service's Deployment gets the new image.
func TestRenderPlainDirectory(t *testing.T) {
	repo, p := loadOne(t, "testdata/repos/plain", "api")
	rel, err := NewRenderer(testClusters).Render(repo, p, "dev")
	require.NoError(t, err)
	assert.Equal(t, []string{"Service/api-dev/api", "Deployment/api-dev/api", "Deployment/api-dev/worker"}, kinds(rel.Objects.Decode()))
	assert.Equal(t, []string{"registry.example.com/api:1.1.0", "registry.example.com/api:1.1.0", "registry.example.com/proxy:2.1"}, rel.Images)
	assert.Equal(t, "api", rel.Service)

	api := findObject(rel.Objects.Decode(), "Deployment", "api")
	replicas, found, err := unstructured.NestedInt64(api.Object, "spec", "replicas")
	require.NoError(t, err, "a substituted number is a number")
	assert.True(t, found)
	assert.Equal(t, int64(3), replicas)
	containers, _, _ := unstructured.NestedSlice(api.Object, "spec", "template", "spec", "containers")
	env := containers[0].(map[string]any)["env"].([]any)
	assert.Equal(t, "debug", env[0].(map[string]any)["value"])
	assert.Equal(t, "${notAValue}", env[1].(map[string]any)["value"], "a placeholder without a value stays")

	worker := findObject(rel.Objects.Decode(), "Deployment", "worker")
	assert.Equal(t, []string{"registry.example.com/api:1.0.0"}, deploymentImages(worker), "other Deployments keep their image")
}

// TestRenderArgoCDExamples renders the real-world manifests as written.
func TestRenderArgoCDExamples(t *testing.T) {
	tests := []struct {
		pipeline    string
		deployment  string
		service     string
		objects     int
		deployments int
		images      []string
	}{
		{"guestbook", "guestbook-ui", "guestbook-ui", 2, 1, []string{"gcr.io/google-samples/gb-frontend:v6"}},
		{"kustomize-guestbook", "kustomize-guestbook-ui", "kustomize-guestbook-ui", 2, 1, []string{"gcr.io/google-samples/gb-frontend:v6"}},
		{"sock-shop", "front-end", "front-end", 29, 14, []string{"weaveworksdemos/front-end:0.3.13"}},
	}
	for _, tt := range tests {
		t.Run(tt.pipeline, func(t *testing.T) {
			repo, p := loadOne(t, "testdata/argocd-example-apps", tt.pipeline)
			rel, err := NewRenderer(testClusters).Render(repo, p, "dev")
			require.NoError(t, err)
			assert.Equal(t, tt.deployment, rel.Deployment)
			assert.Equal(t, tt.service, rel.Service)
			assert.Equal(t, tt.objects, rel.Objects.Len())
			assert.Equal(t, tt.images, rel.Images)
			deployments := 0
			for _, o := range rel.Objects.Decode() {
				assert.Equal(t, p.Spec.Stages[0].Namespace, o.GetNamespace(), RefOf(o).String())
				if o.GetKind() != "Deployment" {
					continue
				}
				deployments++
				if o.GetName() != rel.Deployment {
					for _, img := range deploymentImages(o) {
						assert.NotContains(t, img, "front-end:0.3.13", "only the service's Deployment gets the new image")
					}
				}
			}
			assert.Equal(t, tt.deployments, deployments)
		})
	}
}

func TestRenderErrors(t *testing.T) {
	tests := []struct {
		name, pipeline, want string
	}{
		{"image not used", `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  manifests: app
  service: web
  input: {image: registry.example.com/other, tag: "1.0"}
  stages: [{name: dev, cluster: dev, namespace: web-dev}]
`, `render stage "dev" of pipeline "web": no container of Deployment "web" uses image registry.example.com/other (it runs nginx:1.27)`},
		{"no deployment", `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  manifests: app
  service: api
  stages: [{name: dev, cluster: dev, namespace: web-dev}]
`, `render stage "dev" of pipeline "web": service "api": the manifests have no Deployment named "api"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewRenderer(testClusters).Render(NewRepo(os.DirFS("testdata/repos/hash-a")), parseOne(t, tt.pipeline), "dev")
			require.Error(t, err)
			assert.Equal(t, tt.want, err.Error())
		})
	}
}

// TestRenderCache checks that a stage whose inputs did not change is not rendered again, and
// that a change to any file it read, or to its parameters, renders it again.
func TestRenderCache(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.CopyFS(dir, os.DirFS("../examples/rolling-upgrade")))
	r := NewRenderer(testClusters)
	render := func() *Release {
		t.Helper()
		repo := NewRepo(os.DirFS(dir)) // a new snapshot each time, as after a Git poll
		pipelines, err := Load(repo, testClusters)
		require.NoError(t, err)
		rel, err := r.Render(repo, pipelines[0], "dev")
		require.NoError(t, err)
		return rel
	}
	first := render()
	assert.Equal(t, RenderStats{Rendered: 1}, r.Stats())

	assert.Same(t, first, render(), "unchanged inputs reuse the cached release")
	assert.Equal(t, RenderStats{Rendered: 1, Reused: 1}, r.Stats())

	require.NoError(t, os.WriteFile(filepath.Join(dir, "README.md"), []byte("not an input\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "apps/web/overlays/prod/kustomization.yaml"), []byte("resources: [../../base]\n"), 0o600))
	assert.Same(t, first, render(), "files the stage does not read are not inputs")

	deployment := filepath.Join(dir, "apps/web/base/deployment.yaml")
	data, err := os.ReadFile(deployment)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(deployment, append(data, "        terminationMessagePath: /dev/termination-log\n"...), 0o600))
	changed := render()
	assert.NotEqual(t, first.Hash, changed.Hash)
	assert.Equal(t, RenderStats{Rendered: 2, Reused: 2}, r.Stats())

	pipeline := filepath.Join(dir, "pipelines/web.yaml")
	data, err = os.ReadFile(pipeline)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(pipeline, []byte(strings.Replace(string(data), `tag: "1.4.2"`, `tag: "1.4.3"`, 1)), 0o600))
	retagged := render()
	assert.NotEqual(t, changed.Hash, retagged.Hash)
	assert.Equal(t, []string{"registry.example.com/team/web:1.4.3"}, retagged.Images)
	assert.Equal(t, RenderStats{Rendered: 3, Reused: 2}, r.Stats())
}

// TestNodeValueMatchesJSON checks that the direct YAML-to-object conversion gives what the
// JSON path (kustomize's own) gives, and defers to it for what JSON cannot say plainly.
func TestNodeValueMatchesJSON(t *testing.T) {
	tests := []struct {
		name     string
		yaml     string
		fallback bool
	}{
		{"scalars", `{kind: X, i: 3, neg: -0x10, big: 9007199254740993, f: 1.5, whole: 2.0, exp: 1e3, t: true, T: True, n: null, e: ~, s: "3", q: 'yes', u: 1_000}`, false},
		{"nested", "kind: X\nspec:\n  list: [1, {a: [b, {c: d}]}]\n  empty: {}\n  none: []\n", false},
		{"anchors", "kind: X\na: &x {k: v}\nb: *x\n", false},
		{"timestamp", "kind: X\nwhen: 2024-01-02\n", true},
		{"infinity", "kind: X\nf: .inf\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node, err := kyaml.Parse(tt.yaml)
			require.NoError(t, err)
			got, err := nodeValue(node.YNode(), 0)
			if tt.fallback {
				assert.ErrorIs(t, err, errNotJSON)
				return
			}
			require.NoError(t, err)
			data, err := node.MarshalJSON()
			require.NoError(t, err)
			want := &unstructured.Unstructured{}
			require.NoError(t, want.UnmarshalJSON(data))
			assert.Equal(t, want.Object, got)
		})
	}
}

// TestRenderConcurrent renders the examples and the real-world repositories many times at
// once, as RenderAll does and as callers of Render may, and checks that every release is the
// one a render on its own gives and that no render changed the shared snapshot. Under -race
// it checks that renders share no state unguarded, ebb's or kustomize's: the openapi
// repository sets kustomize's process-wide schema while other renders read it (without
// kustomizeMu's write lock, the race detector reports it in most runs).
func TestRenderConcurrent(t *testing.T) {
	dirs := []string{
		"../examples/rolling-upgrade", "../examples/blue-green", "../examples/from-yaml",
		"testdata/argocd-example-apps", "testdata/repos/plain", "testdata/repos/hash-a",
		"testdata/repos/openapi",
	}
	alone := map[string]map[string]string{}
	for _, dir := range dirs {
		repo := NewRepo(os.DirFS(dir))
		pipelines, err := Load(repo, testClusters)
		require.NoError(t, err)
		hashes := map[string]string{}
		for _, p := range pipelines {
			for _, s := range p.Spec.Stages {
				rel, err := NewRenderer(testClusters).Render(repo, p, s.Name)
				require.NoError(t, err)
				hashes[p.Metadata.Name+"/"+s.Name] = rel.Hash
			}
		}
		alone[dir] = hashes
	}

	var wg sync.WaitGroup
	schemaRepo, schemaPipeline := loadOne(t, "testdata/repos/openapi", "schema")
	for range 4 {
		wg.Go(func() {
			for range 5 {
				rel, err := NewRenderer(testClusters).Render(schemaRepo, schemaPipeline, "dev")
				if assert.NoError(t, err) {
					assert.Equal(t, alone["testdata/repos/openapi"]["schema/dev"], rel.Hash)
				}
			}
		})
	}
	for range 3 {
		for _, dir := range dirs {
			wg.Go(func() {
				repo := NewRepo(os.DirFS(dir))
				pipelines, err := Load(repo, testClusters)
				if !assert.NoError(t, err) {
					return
				}
				releases, err := NewRenderer(testClusters).RenderAll(repo, pipelines)
				if !assert.NoError(t, err) {
					return
				}
				hashes := map[string]string{}
				for _, rel := range releases {
					hashes[rel.Pipeline+"/"+rel.Stage] = rel.Hash
				}
				assert.Equal(t, alone[dir], hashes, dir)
				assertSnapshotUnchanged(t, repo, dir)
			})
		}
	}
	wg.Wait()

	rel, err := NewRenderer(testClusters).Render(schemaRepo, schemaPipeline, "dev")
	require.NoError(t, err)
	containers, _, _ := unstructured.NestedSlice(findObject(rel.Objects.Decode(), "Deployment", "web").Object, "spec", "template", "spec", "containers")
	require.Len(t, containers, 2, "the patch merged into the containers by name, as the schema says")
	assert.Equal(t, []any{map[string]any{"name": "MODE", "value": "patched"}, map[string]any{"name": "PORT", "value": "80"}},
		containers[0].(map[string]any)["env"])
}

// assertSnapshotUnchanged checks that the snapshot's in-memory copy still holds the
// repository's files as they are on disk, and nothing of the renders' own.
func assertSnapshotUnchanged(t *testing.T, repo *Repo, dir string) {
	t.Helper()
	mem, err := repo.memFS()
	require.NoError(t, err)
	assert.False(t, mem.Exists(scratchRoot), "a render wrote into the snapshot")
	err = mem.Walk(repoRoot, func(p string, info fs.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		want, err := os.ReadFile(filepath.Join(dir, strings.TrimPrefix(p, repoRoot+"/")))
		if err != nil {
			return err
		}
		got, err := mem.ReadFile(p)
		if err != nil {
			return err
		}
		assert.Equal(t, string(want), string(got), "%s changed", p)
		return nil
	})
	assert.NoError(t, err)
}
