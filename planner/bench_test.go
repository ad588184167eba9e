package planner

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
func loadAndRender(b *testing.B, r *Renderer, dir string, parsed *ParseCache) []*Release {
	repo := NewRepo(os.DirFS(dir))
	opts := testClusters
	opts.Parsed = parsed
	pipelines, err := Load(repo, opts)
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
		releases := loadAndRender(b, NewRenderer(testClusters), dir, nil)
		if len(releases) != 1000 {
			b.Fatalf("rendered %d releases, want 1000", len(releases))
		}
	}
}

// BenchmarkLoadRender500Unchanged is a poll that found a new commit which changed none of the
// pipelines' inputs, as the daemon plans it: every file's parse and every release come from
// the caches, kustomize does not run.
func BenchmarkLoadRender500Unchanged(b *testing.B) {
	dir := benchRepo(b, 500)
	r := NewRenderer(testClusters)
	parsed := &ParseCache{}
	first := loadAndRender(b, r, dir, parsed)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		releases := loadAndRender(b, r, dir, parsed)
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

// BenchmarkGoodBesideHostile renders the pipeline "good" while another pipeline's manifest is
// hostile, each iteration a new snapshot and renderer, as a daemon that just started sees
// them:
//
//   - alone: the good pipeline and nothing else, for comparison;
//   - 50MB: beside a 50 MB ConfigMap (refused unread by maxFileBytes);
//   - bomb: beside a YAML alias bomb (refused by maxYAMLAliases without being expanded);
//   - slow: beside a manifest within every limit that kustomize reads for seconds (it reads a
//     mapping in time quadratic in its keys), which runs into the render deadline.
//
// good-ms is how long the good pipeline's Render took, started at the same moment as the
// hostile one's; all-ms is how long RenderAll of both took: what `ebb validate` waits for (at
// most the render deadline, 10s). The daemon does not wait for it: it hands each pipeline on
// as soon as it rendered (RenderEach; internal/realapps' BenchmarkGoodReleaseBesideHostile
// measures that through the daemon).
func BenchmarkGoodBesideHostile(b *testing.B) {
	for _, tc := range []struct {
		name  string
		files map[string]map[string]string
		big   bool
	}{
		{"alone", nil, false},
		{"50MB", map[string]map[string]string{"hostile": {}}, true},
		{"bomb", map[string]map[string]string{"hostile": {"bomb.yaml": aliasBombYAML()}}, false},
		{"slow", map[string]map[string]string{"hostile": {"slow.yaml": slowManifest(50, 10000)}}, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			dir := hostileRepo(b, tc.files)
			if tc.big {
				writeConfigMap(b, filepath.Join(dir, "hostile", "huge.yaml"), 50<<20)
			}
			opts := testClusters
			opts.Limits = DefaultLimits()
			warm, p := loadOne(b, dir, "good") // kustomize parses its schema once per process
			if _, err := NewRenderer(opts).Render(warm, p, "dev"); err != nil {
				b.Fatal(err)
			}
			var good, all time.Duration
			for b.Loop() {
				repo := NewRepo(os.DirFS(dir))
				pipelines, err := Load(repo, opts)
				if err != nil {
					b.Fatal(err)
				}
				r := NewRenderer(opts)
				start := time.Now()
				done := make(chan error, 1)
				go func() { _, err := r.RenderAll(repo, pipelines); done <- err }()
				if _, err := r.Render(repo, pipelines[0], "dev"); err != nil {
					b.Fatal(err)
				}
				good += time.Since(start)
				err = <-done
				all += time.Since(start)
				if (err != nil) != (tc.files != nil) || (tc.name == "slow" && !strings.Contains(err.Error(), "limits.renderTimeout")) {
					b.Fatalf("RenderAll: %v", err)
				}
				b.StopTimer()
				waitIdle(r) // the slow build runs on past its deadline: not into the next iteration
				b.StartTimer()
			}
			b.ReportMetric(good.Seconds()*1000/float64(b.N), "good-ms/op")
			b.ReportMetric(all.Seconds()*1000/float64(b.N), "all-ms/op")
		})
	}
}

// waitIdle waits until no build of r runs.
func waitIdle(r *Renderer) {
	for len(r.slots) > 0 {
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkRenderAtLimits renders a stage at the default limits of ordinary manifests and
// reports the heap the render took above the start (peak-heap-MiB), what the defaults were
// chosen by: two such renders at once fit in the chart's 512 Mi, and each within the render
// deadline.
//
//   - documents: 1000 Deployments of two containers (kustomize's time grows with the square
//     of the number of objects: 2000 take five times as long);
//   - bytes: just under 10 MiB in 1000 ConfigMaps of 10 KB.
func BenchmarkRenderAtLimits(b *testing.B) {
	deployment := deploymentYAML + `        env:
        - {name: LOG_LEVEL, value: info}
        - {name: DATABASE_URL, valueFrom: {secretKeyRef: {name: db, key: url}}}
        resources:
          requests: {cpu: 100m, memory: 128Mi}
        readinessProbe:
          httpGet: {path: /readyz, port: 8080}
      - name: sidecar
        image: registry.example.com/team/proxy:1.0
        args: [--listen=:9090, --upstream=127.0.0.1:8080]
`
	var configMap strings.Builder
	configMap.WriteString("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n")
	for k := range 48 {
		fmt.Fprintf(&configMap, "  key%02d: %s\n", k, strings.Repeat("v", 200))
	}
	for _, tc := range []struct{ name, doc string }{{"documents", deployment}, {"bytes", configMap.String()}} {
		b.Run(tc.name, func(b *testing.B) {
			dir := hostileRepo(b, nil)
			var m strings.Builder
			for i := range DefaultLimits().MaxDocuments - 1 { // and the Deployment web
				fmt.Fprintf(&m, "---\n%s", strings.Replace(tc.doc, "name: web\n", fmt.Sprintf("name: web-%d\n", i), 1))
			}
			writeTree(b, dir, map[string]string{"app/many.yaml": m.String()})
			opts := testClusters
			opts.Limits = DefaultLimits()
			var peak uint64
			for b.Loop() {
				repo, p := loadOne(b, dir, "good")
				stop := heapPeak(2 << 30)
				rel, err := NewRenderer(opts).Render(repo, p, "dev")
				peak = max(peak, stop())
				if err != nil {
					b.Fatal(err)
				}
				if rel.Objects.Len() < 1000 {
					b.Fatalf("rendered %d objects", rel.Objects.Len())
				}
			}
			b.ReportMetric(float64(m.Len())/(1<<20), "manifest-MiB")
			b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
		})
	}
}
