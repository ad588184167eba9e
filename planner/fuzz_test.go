package planner

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"ebb.dev/ebb/planner/strictyaml"
)

// located is the shape of every parse error: file:line:col: message.
var located = regexp.MustCompile(`^fuzz\.yaml:[0-9]+:[0-9]+: \S`)

// FuzzParseFile feeds arbitrary bytes to the strict parser. No input may make it panic, every
// error must be located, and a file it accepts must hold named pipelines with stages.
// The seed corpus is every pipeline fixture and example of the repository.
func FuzzParseFile(f *testing.F) {
	var seeds []string
	for _, pattern := range []string{
		"testdata/malformed/*.yaml", "testdata/repos/*/pipelines/*.yaml", "testdata/argocd-example-apps/pipelines/*.yaml",
		"../examples/*/pipelines/*.yaml",
	} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, files...)
	}
	if len(seeds) < 10 {
		f.Fatalf("seed corpus has %d files", len(seeds))
	}
	for _, file := range seeds {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("apiVersion: ebb.dev/v1alpha1\nkind: Pipeline\nspec: &a\n  stages: [*a]\n"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nspec: {stages: [*c, *c]}\n"))
	f.Add([]byte("\xef\xbb\xbfapiVersion: ebb.dev/v1alpha1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pipelines, err := ParseFile("fuzz.yaml", data, testClusters)
		if err != nil {
			if pipelines != nil {
				t.Fatalf("pipelines returned with an error")
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !located.MatchString(line) {
					t.Fatalf("error without a location: %q", line)
				}
			}
			return
		}
		for _, p := range pipelines {
			if p.Metadata.Name == "" || len(p.Spec.Stages) == 0 {
				t.Fatalf("accepted a pipeline without name or stages: %+v", p)
			}
		}
	})
}

// manifestLocated is the shape of every render error of FuzzRenderManifest.
var manifestLocated = regexp.MustCompile(`^(app/fuzz\.yaml|app/deployment\.yaml|pipelines/p\.yaml):[0-9]+:[0-9]+: \S`)

// FuzzRenderManifest feeds arbitrary bytes to the render as a manifest beside a Deployment,
// with small limits. No input may make it panic, run away with memory, render past the
// deadline (the limits must bound a render's time, the deadline is only a backstop), or fail
// without a location; a manifest whose shape exceeds a limit must
// fail with that limit; and a render that succeeds must give the same release when its
// unchanged inputs are rendered again from the cache. The seeds are the manifests of the
// repository's examples and fixtures, and YAML shapes that have broken parsers.
func FuzzRenderManifest(f *testing.F) {
	var seeds []string
	for _, pattern := range []string{
		"testdata/podinfo-kustomize/*.yaml", "testdata/argocd-example-apps/*/*.yaml", "testdata/argocd-example-apps/sock-shop/base/*.yaml",
		"testdata/repos/*/app/*.yaml", "../examples/*/apps/*/*/*.yaml",
	} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, files...)
	}
	if len(seeds) < 10 {
		f.Fatalf("seed corpus has %d files", len(seeds))
	}
	for _, file := range seeds {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(aliasBombYAML()))
	f.Add([]byte(thing("deep", strings.Repeat("[", 60)+strings.Repeat("]", 60))))
	f.Add([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata: &m {name: m}\ndata: {<<: *m, a: b}\n"))
	f.Add([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: &n a}\ndata: {*n : *n}\n"))
	f.Add([]byte("---\n---\n\xef\xbb\xbf"))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: ConfigMap, metadata: {name: x}}]\n"))
	opts := testClusters
	opts.Limits = Limits{MaxFileBytes: 256 << 10, MaxRenderBytes: 512 << 10, MaxDocuments: 200,
		MaxYAMLAliases: 100, MaxYAMLDepth: 40, MaxMappingKeys: 500, RenderTimeout: 10 * time.Second}
	pipeline := []byte(pipelineYAML("p", "p-dev"))
	deployment := []byte(deploymentYAML)
	r := NewRenderer(opts)
	f.Fuzz(func(t *testing.T, data []byte) {
		files := fstest.MapFS{
			"pipelines/p.yaml":    {Data: pipeline},
			"app/deployment.yaml": {Data: deployment},
			"app/fuzz.yaml":       {Data: data},
		}
		repo := NewRepo(files)
		pipelines, err := Load(repo, opts)
		if err != nil || len(pipelines) != 1 {
			return // the input looks like one of ebb's own files: FuzzParseFile's concern
		}
		releases, err := r.RenderAll(repo, pipelines)
		_, shapeErr := strictyaml.Check("app/fuzz.yaml", data, opts.Limits.manifestLimits())
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !manifestLocated.MatchString(line) {
					t.Fatalf("error without a location: %q", line)
				}
				if strings.Contains(line, "limits.renderTimeout") {
					t.Fatalf("a manifest within the limits renders for longer than %s: %s", opts.Limits.RenderTimeout, line)
				}
			}
		}
		var limit *strictyaml.LimitError
		if errors.As(shapeErr, &limit) {
			if err == nil || !strings.Contains(err.Error(), limit.At.Msg) {
				t.Fatalf("the manifest exceeds a limit (%v) but the render says %v", shapeErr, err)
			}
			return
		}
		if err != nil {
			return
		}
		again, err := r.RenderAll(NewRepo(files), pipelines)
		if err != nil || len(again) != 1 || again[0].Hash != releases[0].Hash {
			t.Fatalf("rendering unchanged inputs again gave %v, %v; first %s", again, err, releases[0].Hash)
		}
	})
}
