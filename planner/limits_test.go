package planner

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// deploymentYAML is the Deployment "web" every pipeline of these tests deploys.
const deploymentYAML = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
`

// writeTree writes files (path -> content) under root.
func writeTree(t testing.TB, root string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(root, name)), 0o700))
		require.NoError(t, os.WriteFile(filepath.Join(root, name), []byte(data), 0o600))
	}
}

// pipelineOf is a valid pipeline named name deploying the plain directory dir.
func pipelineOf(name, dir string) string {
	return strings.Replace(pipelineYAML(name, name+"-dev"), "manifests: app", "manifests: "+dir, 1)
}

// hostileRepo writes a repository with the pipeline "good" (app/) and, for each entry of bad,
// a pipeline of that name whose directory holds the Deployment and the given files.
func hostileRepo(t testing.TB, bad map[string]map[string]string) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{"app/deployment.yaml": deploymentYAML, "pipelines/good.yaml": pipelineOf("good", "app")}
	for name, manifests := range bad {
		files["pipelines/"+name+".yaml"] = pipelineOf(name, name)
		files[name+"/deployment.yaml"] = deploymentYAML
		for file, data := range manifests {
			files[name+"/"+file] = data
		}
	}
	writeTree(t, root, files)
	return root
}

// writeConfigMap streams a ConfigMap of at least size bytes to file, 100-byte values each
// under its own key, without holding it in memory.
func writeConfigMap(t testing.TB, file string, size int64) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(file), 0o700))
	f, err := os.Create(file)
	require.NoError(t, err)
	w := bufio.NewWriter(f)
	n, _ := fmt.Fprint(w, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n")
	value := strings.Repeat("x", 100)
	for i := 0; int64(n) < size; i++ {
		m, _ := fmt.Fprintf(w, "  key%08d: %s\n", i, value)
		n += m
	}
	require.NoError(t, w.Flush())
	require.NoError(t, f.Close())
}

// aliasBombYAML is a ConfigMap whose annotations hold a "billion laughs": ten levels of ten
// aliases, 10^10 nodes expanded.
func aliasBombYAML() string {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\n  annotations:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 10; i++ {
		fmt.Fprintf(&b, "    a%d: &a%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*a%d, ", i-1), 10), ", "))
	}
	b.WriteString("data:\n  x: y\n")
	return b.String()
}

// thing is an object of a kind kustomize knows nothing of, with spec as written.
func thing(name, spec string) string {
	return "apiVersion: example.com/v1\nkind: Thing\nmetadata:\n  name: " + name + "\nspec: " + spec + "\n"
}

// renderRepo loads and renders every pipeline of dir and returns the rendered stages
// (pipeline/stage) and the error lines.
func renderRepo(t testing.TB, r *Renderer, dir string, opts Options) ([]string, []string) {
	t.Helper()
	repo := NewRepo(os.DirFS(dir))
	pipelines, loadErr := Load(repo, opts)
	releases, renderErr := r.RenderAll(repo, pipelines)
	var rendered, errs []string
	for _, rel := range releases {
		rendered = append(rendered, rel.Pipeline+"/"+rel.Stage)
	}
	for _, err := range []error{loadErr, renderErr} {
		if err != nil {
			errs = append(errs, strings.Split(err.Error(), "\n")...)
		}
	}
	return rendered, errs
}

// TestRenderLimits checks each limit on what a render reads: past it, that pipeline fails
// with an error at the file (and, for the shape of a manifest, the line) that exceeded it,
// naming the limit and its value, and the good pipeline beside it renders.
func TestRenderLimits(t *testing.T) {
	opts := testClusters
	opts.Limits = Limits{MaxFileBytes: 64 << 10, MaxRenderBytes: 100 << 10, MaxDocuments: 10, MaxYAMLAliases: 20, MaxYAMLDepth: 8, MaxMappingKeys: 50}
	big := strings.Repeat("#"+strings.Repeat("x", 99)+"\n", 700)  // 70700 bytes of comment
	half := strings.Repeat("#"+strings.Repeat("x", 99)+"\n", 600) // 60600
	var docs, keys strings.Builder
	for i := range 10 {
		fmt.Fprintf(&docs, "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c%d}\n", i)
	}
	keys.WriteString("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: keys}\ndata:\n")
	for i := range 51 {
		fmt.Fprintf(&keys, "  k%d: v\n", i)
	}
	deep := strings.Repeat("{a: ", 8) + "x" + strings.Repeat("}", 8)
	anchored := "[" + strings.Repeat("1, ", 4000) + "1]"
	render := `render stage "dev" of pipeline "bad": `
	tests := []struct {
		name  string
		files map[string]string // of the pipeline "bad"
		err   string
		bad   string // the pipeline that does not render, if not "bad"
	}{
		{"a manifest over the file limit", map[string]string{"big.yaml": thing("big", "{}") + big},
			`bad/big.yaml:1:1: ` + render + `the file is 70770 bytes, over the limit of 64Ki per file (limits.maxFileBytes)`, ""},
		{"a pipeline file over the file limit", map[string]string{"../pipelines/huge.yaml": pipelineOf("huge", "app") + big},
			`pipelines/huge.yaml:1:1: the file is 70866 bytes, over the limit of 64Ki per file (limits.maxFileBytes)`, "huge"},
		{"a kustomization over the file limit", map[string]string{"kustomization.yaml": "resources: [deployment.yaml]\n" + big},
			`bad/kustomization.yaml:1:1: the file is 70729 bytes, over the limit of 64Ki per file (limits.maxFileBytes)`, ""},
		{"a render over the render limit", map[string]string{"a.yaml": thing("a", "{}") + half, "b.yaml": thing("b", "{}") + half},
			`bad/b.yaml:1:1: ` + render + `reading it makes the render read 121336 bytes, over the limit of 100Ki per render (limits.maxRenderBytes)`, ""},
		{"too many documents", map[string]string{"cms.yaml": docs.String()},
			`bad/deployment.yaml:1:1: ` + render + `reading it makes the render read 11 YAML documents, more than 10 (limits.maxDocuments)`, ""},
		{"nested too deeply", map[string]string{"deep.yaml": thing("deep", deep)},
			`bad/deep.yaml:5:36: ` + render + `nested deeper than 8 levels (limits.maxYAMLDepth)`, ""},
		{"a mapping with too many keys", map[string]string{"keys.yaml": keys.String()},
			`bad/keys.yaml:5:3: ` + render + `a mapping with 51 keys, more than 50 (limits.maxMappingKeys)`, ""},
		{"an alias bomb", map[string]string{"bomb.yaml": aliasBombYAML()},
			`bad/bomb.yaml:8:14: ` + render + `more than 20 aliases to expand (counting those inside aliased nodes once per expansion) (limits.maxYAMLAliases)`, ""},
		{"a few aliases to a big node", map[string]string{"wide.yaml": thing("wide", "{base: &b "+anchored+", copies: [*b, *b, *b, *b]}")},
			`bad/wide.yaml:5:12031: ` + render + `aliases expand the file from 4021 to 20025 YAML nodes; they may add at most as many as it has, plus 10000 (limits.maxYAMLAliases)`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := hostileRepo(t, map[string]map[string]string{"bad": tt.files})
			rendered, errs := renderRepo(t, NewRenderer(opts), dir, opts)
			assert.Equal(t, []string{tt.err}, errs)
			assert.Contains(t, rendered, "good/dev")
			bad := "bad"
			if tt.bad != "" {
				bad = tt.bad
			}
			assert.NotContains(t, rendered, bad+"/dev")
		})
	}
}

// slowManifest is a manifest within every default limit that kustomize takes seconds to read,
// mappings ConfigMaps of keys keys: it reads a mapping in time quadratic in its keys.
func slowManifest(mappings, keys int) string {
	var b strings.Builder
	for m := range mappings {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: slow%d\ndata:\n", m)
		for i := range keys {
			fmt.Fprintf(&b, "  key%05d: \"1\"\n", i)
		}
	}
	return b.String()
}

// TestRenderDeadline checks that a render past its deadline fails with that error while the
// good pipeline renders, that its build (which cannot be stopped) is not started again while
// it runs nor, once it ended, for the same inputs, and that changed inputs render again.
func TestRenderDeadline(t *testing.T) {
	opts := testClusters
	opts.Limits.RenderTimeout = time.Second
	dir := hostileRepo(t, map[string]map[string]string{"slow": {"slow.yaml": slowManifest(60, 5000)}})
	r := NewRenderer(opts)
	const at = `pipelines/slow.yaml:6:14: render stage "dev" of pipeline "slow": `

	rendered, errs := renderRepo(t, r, dir, opts)
	assert.Equal(t, []string{"good/dev"}, rendered)
	assert.Equal(t, []string{at + "the render took longer than 1s (limits.renderTimeout)"}, errs)

	rendered, errs = renderRepo(t, r, dir, opts)
	assert.Equal(t, []string{"good/dev"}, rendered)
	assert.Equal(t, []string{at + "the stage's previous render is still running, past its deadline of 1s (limits.renderTimeout); it is tried again once that one ends"}, errs)

	require.Eventually(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return !r.running["slow/dev"]
	}, 5*time.Minute, 50*time.Millisecond, "the abandoned build ends")
	// Once it ended, the same inputs still fail at the deadline (remembered; or, on a machine so
	// busy that the build read nothing within its deadline, built again: see
	// TestTimedOutInputsRemembered), and the good pipeline renders.
	rendered, errs = renderRepo(t, r, dir, opts)
	assert.Equal(t, []string{"good/dev"}, rendered)
	require.Len(t, errs, 1)
	assert.True(t, strings.HasPrefix(errs[0], at+"the render took longer than 1s (limits.renderTimeout)"), errs[0])

	// Changed inputs render again (a small manifest, well inside the deadline on a busy machine),
	// once a build of the old ones that the third render may have started again has ended.
	require.Eventually(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return !r.running["slow/dev"]
	}, 5*time.Minute, 50*time.Millisecond, "the abandoned build ends")
	writeTree(t, dir, map[string]string{"slow/slow.yaml": slowManifest(1, 10)})
	rendered, errs = renderRepo(t, r, dir, opts)
	assert.Equal(t, []string{"good/dev", "slow/dev"}, rendered)
	assert.Empty(t, errs)
}

// deadlineAfterFirstRead is a repository whose first file read moves its render's deadline
// into the past: the build reads something, then stops at its next look, as a build that ran
// into its deadline does, whatever the machine's speed.
type deadlineAfterFirstRead struct {
	filesys.FileSystem
	fsys *renderFS
}

func (d deadlineAfterFirstRead) ReadFile(p string) ([]byte, error) {
	d.fsys.deadline = time.Now().Add(-time.Hour)
	return d.FileSystem.ReadFile(p)
}

// TestTimedOutInputsRemembered checks which builds past their deadline are remembered, so
// that the same inputs fail at once until they change: those that read their inputs, whether
// their caller had left (abandoned) or was handed the timeout, and not those that read nothing
// before the deadline (their time went to waiting, not to the inputs). Each build is run as
// render runs it, with a deadline moved by the test rather than the clock, so the test does
// not depend on how busy the machine is. Changed inputs are built again.
func TestTimedOutInputsRemembered(t *testing.T) {
	opts := testClusters
	opts.Limits = DefaultLimits()
	past := time.Now().Add(-time.Hour)
	tests := []struct {
		name       string
		abandoned  bool
		deadline   string // "none", "past" from the start, or "after-read"
		remembered bool
	}{
		{"abandoned, then finished", true, "none", true},
		{"abandoned, stopped after reading", true, "after-read", true},
		{"handed back, stopped after reading", false, "after-read", true},
		{"abandoned, stopped before reading", true, "past", false},
		{"handed back, stopped before reading", false, "past", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := hostileRepo(t, nil)
			repo, p := loadOne(t, dir, "good")
			r := NewRenderer(opts)
			params := newRenderParams(p, p.StageNamed("dev"))
			key := params.Pipeline + "/" + params.Stage
			mem, err := repo.memFSWith(r.limits.MaxFileBytes)
			require.NoError(t, err)
			fsys := newRenderFS(mem).limited(repo, r.limits, time.Time{})
			switch tt.deadline {
			case "past":
				fsys.deadline = past
			case "after-read":
				fsys.repo = deadlineAfterFirstRead{FileSystem: mem, fsys: fsys}
			}
			f := &flight{key: key, done: make(chan buildResult, 1)}
			r.slots <- struct{}{} // the slot start takes; build frees it
			if tt.abandoned {
				r.mu.Lock()
				f.abandoned, r.running[key] = true, true
				r.mu.Unlock()
			}
			r.build(context.Background(), f, fsys, params, params.key(), false)
			if !tt.abandoned {
				_, err := r.finished(key, params.key(), fsys, <-f.done)
				require.ErrorContains(t, err, "limits.renderTimeout")
			}
			require.False(t, r.running[key], "the build still counts as running")

			_, err = r.Render(repo, p, "dev")
			if !tt.remembered {
				require.NoError(t, err, "inputs the build never read were taken for too slow")
				assert.Equal(t, 1, r.Stats().Rendered)
				return
			}
			require.ErrorContains(t, err, "(limits.renderTimeout) with these same inputs; it is tried again when they change")
			assert.Equal(t, 0, r.Stats().Rendered)
			writeTree(t, dir, map[string]string{"app/deployment.yaml": strings.Replace(deploymentYAML, "nginx:1.27", "nginx:1.28", 1)})
			repo, p = loadOne(t, dir, "good")
			_, err = r.Render(repo, p, "dev")
			require.NoError(t, err, "changed inputs are built again")
			assert.Equal(t, 1, r.Stats().Rendered)
		})
	}
}

// heapPeak samples the heap every few milliseconds until stop is called, and returns its peak
// above what it was at the start. Past abort bytes it panics: a test that would otherwise
// take the machine's memory fails at once.
func heapPeak(abort uint64) (stop func() uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > base && ms.HeapInuse-base > peak.Load() {
				peak.Store(ms.HeapInuse - base)
			}
			if peak.Load() > abort {
				panic(fmt.Sprintf("the heap grew by %d MiB, past %d MiB", peak.Load()>>20, abort>>20))
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-finished
		return peak.Load()
	}
}

// TestHostileManifestsMemoryBounded renders a good pipeline beside one whose manifest is a
// YAML alias bomb and one whose manifest is 50 MB, with the default limits. The good pipeline
// renders, each bad one fails at its file naming the limit, and the heap stays within 64 MiB
// of where it started: the bomb is refused without being expanded, the big file without being
// read. (Before the limits, the bomb alone took the heap past 4 GiB within seconds.)
func TestHostileManifestsMemoryBounded(t *testing.T) {
	dir := hostileRepo(t, map[string]map[string]string{"bomb": {"bomb.yaml": aliasBombYAML()}, "huge": {}})
	writeConfigMap(t, filepath.Join(dir, "huge", "huge.yaml"), 50<<20)
	opts := testClusters
	opts.Limits = DefaultLimits()

	stop := heapPeak(1 << 30)
	rendered, errs := renderRepo(t, NewRenderer(opts), dir, opts)
	peak := stop()
	t.Logf("heap peak: %d MiB above the start", peak>>20)
	assert.Equal(t, []string{"good/dev"}, rendered)
	assert.Equal(t, []string{
		`bomb/bomb.yaml:9:49: render stage "dev" of pipeline "bomb": more than 1000 aliases to expand (counting those inside aliased nodes once per expansion) (limits.maxYAMLAliases)`,
		`huge/huge.yaml:1:1: render stage "dev" of pipeline "huge": the file is 52428811 bytes, over the limit of 10Mi per file (limits.maxFileBytes)`,
	}, errs)
	assert.Less(t, peak, uint64(64<<20), "heap growth while rendering")
}
