package planner

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// benchRepo writes a repository of n pipelines the size of the rolling-upgrade example: each
// with its own kustomize base and dev and prod overlays.
func benchRepo(b *testing.B, n int) string {
	b.Helper()
	dir := b.TempDir()
	example := os.DirFS("../examples/rolling-upgrade")
	pipeline, err := os.ReadFile("../examples/rolling-upgrade/pipelines/web.yaml")
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		app := fmt.Sprintf("app%03d", i)
		if err := os.CopyFS(filepath.Join(dir, "apps", app), mustSub(b, example, "apps/web")); err != nil {
			b.Fatal(err)
		}
		p := strings.NewReplacer(
			"name: rolling-upgrade-example", "name: "+app,
			"apps/web/", "apps/"+app+"/",
			"namespace: web-dev", "namespace: "+app+"-dev",
			"namespace: web\n", "namespace: "+app+"\n",
		).Replace(string(pipeline))
		if err := os.MkdirAll(filepath.Join(dir, "pipelines"), 0o700); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "pipelines", app+".yaml"), []byte(p), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	return dir
}

func mustSub(b *testing.B, fsys fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		b.Fatal(err)
	}
	return sub
}

// loadAndRender is what the daemon does with a new snapshot: parse and validate every
// pipeline, then render every stage.
func loadAndRender(b *testing.B, r *Renderer, dir string) []*Release {
	repo := NewRepo(os.DirFS(dir))
	pipelines, err := Load(repo, testClusters)
	if err != nil {
		b.Fatal(err)
	}
	releases, err := r.RenderAll(repo, pipelines)
	if err != nil {
		b.Fatal(err)
	}
	return releases
}

// BenchmarkLoadRender500 parses, validates and renders 500 pipelines (1000 stages) from
// scratch. The budget is 2 s per op on the project's 2-core machine.
func BenchmarkLoadRender500(b *testing.B) {
	dir := benchRepo(b, 500)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		releases := loadAndRender(b, NewRenderer(testClusters), dir)
		if len(releases) != 1000 {
			b.Fatalf("rendered %d releases, want 1000", len(releases))
		}
	}
}

// BenchmarkLoadRender500Unchanged is a poll that found a new commit which changed none of the
// pipelines' inputs: every release comes from the cache, kustomize does not run.
func BenchmarkLoadRender500Unchanged(b *testing.B) {
	dir := benchRepo(b, 500)
	r := NewRenderer(testClusters)
	first := loadAndRender(b, r, dir)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		releases := loadAndRender(b, r, dir)
		for i, rel := range releases {
			if rel != first[i] {
				b.Fatalf("release %s/%s was rendered again", rel.Pipeline, rel.Stage)
			}
		}
	}
	b.StopTimer()
	if s := r.Stats(); s.Rendered != 1000 {
		b.Fatalf("stats %+v: kustomize ran again", s)
	}
}

// BenchmarkDiffStage plans one applied stage against the test cluster: a dry-run apply per
// object and a labelled list per resource type. Every resourceVersion stays as it was.
func BenchmarkDiffStage(b *testing.B) {
	d, err := NewDiffer(cluster.Config, DefaultDiffOptions())
	if err != nil {
		b.Fatal(err)
	}
	repo, p := loadOne(b, "../examples/blue-green", "blue-green-example")
	rel, err := NewRenderer(testClusters).Render(repo, p, "prod")
	if err != nil {
		b.Fatal(err)
	}
	inventory := apply(b, d, rel)
	before := resourceVersions(b, d, rel)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		plan, err := d.Diff(ctx, rel, inventory)
		if err != nil {
			b.Fatal(err)
		}
		if plan.Changed() {
			b.Fatalf("an applied release plans changes: %+v", plan.Changes)
		}
	}
	b.StopTimer()
	after := resourceVersions(b, d, rel)
	for k, v := range before {
		if after[k] != v {
			b.Fatalf("planning changed the resourceVersion of %s from %s to %s", k, v, after[k])
		}
	}
}
