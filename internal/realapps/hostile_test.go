package realapps

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/reconciler"
)

// chartMemoryLimit is the daemon's memory limit in the chart (charts/ebb/values.yaml,
// resources.limits.memory): what a hostile manifest must not take it past.
const chartMemoryLimit = 512 << 20

// TestDuplicatePipelineNames adds, beside a pipeline that runs, a second file declaring the
// same name, sorting first and deploying another image into other namespaces: the way a file
// took a pipeline over before. Now both files are in error, in the Pipeline's status, in a
// Warning Event and in `ebb validate`; nothing runs at that commit, the running pipeline's
// objects and ledgers stay as they were, and the newcomer's namespaces are never created.
func TestDuplicatePipelineNames(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, "duplicate", guestbook, envOptions{})
	e.startDaemon()
	first := e.release(guestbook.tag, "release v5 as written")
	e.requireCompleted(first)
	settle(t, e.devCS, e.devNS())
	before := liveObjects(t, e.devDyn, e.devNS(), e.name)
	ledgers := func() map[string]string {
		out := map[string]string{}
		list, err := e.store.ListLedgers(ctx, e.name)
		require.NoError(t, err)
		for _, l := range list {
			if cur := l.Status.Current; cur != nil {
				out[l.Spec.Stage] = cur.Commit + "/" + cur.Hash
			}
		}
		return out
	}
	ledgersBefore := ledgers()
	require.Len(t, ledgersBefore, 2, "the dev and prod ledgers")

	// The newcomer: same name, another image, other namespaces, a path that sorts first.
	hijack := strings.NewReplacer(e.devNS(), "hijack-dev", "namespace: "+e.prodNS()+"\n", "namespace: hijack\n").
		Replace(pipelineFile(e.name, "apps/"+e.name, guestbook, "hijacked", "rolling", "", ""))
	require.NotEqual(t, e.pipeline(guestbook.tag), hijack)
	require.NoError(t, e.repo.WriteFiles(map[string]string{"pipelines/a-hijack.yaml": hijack}))
	dup, err := e.repo.Commit("a second file declares the pipeline's name")
	require.NoError(t, err)
	const own, other = "pipelines/duplicate.yaml", "pipelines/a-hijack.yaml"

	// The Pipeline object names both files.
	var status reconciler.PipelineStatus
	require.Eventually(t, func() bool {
		list, err := e.store.ListPipelines(ctx)
		if err != nil {
			return false
		}
		for _, p := range list {
			if p.Spec.Pipeline == e.name && p.Status.LastError != nil && p.Status.LastError.Commit == dup {
				status = p.Status
				return true
			}
		}
		return false
	}, time.Minute, 100*time.Millisecond, "the Pipeline object shows no error at the duplicate's commit")
	for _, file := range []string{own, other} {
		assert.Contains(t, status.LastError.Message, file+":", "the status does not locate the error in %s", file)
	}
	assert.Contains(t, status.LastError.Message, `duplicate pipeline name "duplicate"`)

	// A Warning Event says so too.
	home := e.devCS
	require.Eventually(t, func() bool {
		list, err := home.CoreV1().Events(e.records).List(ctx, metav1.ListOptions{})
		require.NoError(t, err)
		for _, ev := range list.Items {
			if ev.Type == corev1.EventTypeWarning && strings.Contains(ev.Message, own) && strings.Contains(ev.Message, other) {
				return true
			}
		}
		return false
	}, 30*time.Second, 100*time.Millisecond, "no Warning Event names both files")

	// `ebb validate` names both files, and fails.
	out, err := exec.Command(ebbBin, "validate", e.repo.Dir).CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "ebb validate: %s", out)
	assert.Equal(t, 1, exit.ExitCode(), "%s", out)
	for _, file := range []string{own, other} {
		assert.Contains(t, string(out), file+":", "ebb validate does not locate the error in %s", file)
	}

	// Nothing runs at that commit, over several resyncs; nothing of the first file changes.
	time.Sleep(5 * resync)
	assert.Empty(t, e.deploys(dup), "an execution ran at the duplicate's commit: %s", e.describeAll())
	assert.Equal(t, ledgersBefore, ledgers(), "a ledger changed")
	assert.Empty(t, unchanged(before, liveObjects(t, e.devDyn, e.devNS(), e.name)), "the running pipeline's objects changed")
	assert.Equal(t, e.imageOf(guestbook.tag), image(t, e.devCS, e.devNS(), guestbook.service))
	assert.Equal(t, e.imageOf(guestbook.tag), image(t, e.prodCS, e.prodNS(), guestbook.service))
	for _, ns := range []string{"hijack-dev", "hijack"} {
		_, err := e.devCS.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		assert.Error(t, err, "namespace %s of the newcomer exists in dev", ns)
		_, err = e.prodCS.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		assert.Error(t, err, "namespace %s of the newcomer exists in prod", ns)
	}
}

// hostileFiles are the files of a pipeline named name next to the app's own: its pipeline
// file, deploying apps/<name>/, which holds guestbook's Deployment and the given manifests.
func hostileFiles(t testing.TB, name string, manifests map[string]string) map[string]string {
	t.Helper()
	deployment, err := os.ReadFile(filepath.Join(testdata, guestbook.dir, "guestbook-ui-deployment.yaml"))
	require.NoError(t, err)
	files := map[string]string{
		"pipelines/" + name + ".yaml":                    pipelineFile(name, "apps/"+name, guestbook, guestbook.tag, "rolling", "", ""),
		"apps/" + name + "/guestbook-ui-deployment.yaml": string(deployment),
	}
	for file, content := range manifests {
		files["apps/"+name+"/"+file] = content
	}
	return files
}

// aliasBomb is a ConfigMap whose annotations hold a "billion laughs": ten levels of ten
// aliases, 10^10 nodes once expanded.
func aliasBomb() string {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\n  annotations:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 10; i++ {
		fmt.Fprintf(&b, "    a%d: &a%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*a%d, ", i-1), 10), ", "))
	}
	b.WriteString("data:\n  x: y\n")
	return b.String()
}

// bigConfigMap is a ConfigMap of at least size bytes, 100-byte values under keys numbered
// from 0, the first one's value marked with mark (so each call can make a new file).
func bigConfigMap(size int, mark string) string {
	var b strings.Builder
	b.Grow(size + 200)
	fmt.Fprintf(&b, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  mark: %q\n", mark)
	value := strings.Repeat("x", 100)
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "  key%08d: %s\n", i, value)
	}
	return b.String()
}

// slowManifest is a manifest within every default limit that kustomize reads for longer than
// the render deadline: mappings ConfigMaps of keys keys (it reads a mapping in time quadratic
// in its keys), the first one's name marked with mark.
func slowManifest(mappings, keys int, mark string) string {
	var b strings.Builder
	for m := range mappings {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: slow%d-%s\ndata:\n", m, mark)
		for i := range keys {
			fmt.Fprintf(&b, "  key%05d: \"1\"\n", i)
		}
	}
	return b.String()
}

// peakRSS reads the daemon's peak resident memory, VmHWM, from /proc.
func peakRSS(t testing.TB, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// TestHostileManifestsBesideGood commits, in one commit with a good pipeline's release, a
// pipeline whose manifests hold a YAML alias bomb and one whose manifests hold a 50 MB
// ConfigMap. The good pipeline deploys through dev and prod; the two others fail, each with
// the limit it exceeded in its Pipeline's status, and nothing of theirs is applied. The
// daemon's peak memory (VmHWM, read from /proc) stays under the chart's memory limit: the
// bomb alone took it past 4 GiB before there were limits.
func TestHostileManifestsBesideGood(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, "beside-hostile", guestbook, envOptions{})
	files := hostileFiles(t, "hostile-bomb", map[string]string{"bomb.yaml": aliasBomb()})
	for k, v := range hostileFiles(t, "hostile-huge", map[string]string{"huge.yaml": bigConfigMap(50<<20, "1")}) {
		files[k] = v
	}
	require.NoError(t, e.repo.WriteFiles(files))
	for _, name := range []string{"hostile-bomb", "hostile-huge"} {
		t.Cleanup(func() {
			deleteNamespace(t, e.devCS, name+"-dev")
			deleteNamespace(t, e.prodCS, name)
		})
	}
	d := e.startDaemon()
	sha := e.release(guestbook.tag, "a good release beside an alias bomb and a 50 MB manifest")
	e.requireCompleted(sha)
	assert.Equal(t, e.imageOf(guestbook.tag), image(t, e.prodCS, e.prodNS(), guestbook.service))

	// Each error names its limit, at the manifest past it.
	want := map[string][2]string{
		"hostile-bomb": {"limits.maxYAMLAliases", "apps/hostile-bomb/bomb.yaml:"},
		"hostile-huge": {"limits.maxFileBytes", "apps/hostile-huge/huge.yaml:"},
	}
	got := map[string]string{}
	require.Eventually(t, func() bool {
		list, err := e.store.ListPipelines(ctx)
		if err != nil {
			return false
		}
		for _, p := range list {
			if le := p.Status.LastError; le != nil && le.Commit == sha {
				got[p.Spec.Pipeline] = le.Message
			}
		}
		return len(got) == len(want)
	}, time.Minute, 100*time.Millisecond, "the hostile pipelines' errors: %v", got)
	for name, w := range want {
		assert.Contains(t, got[name], w[0], "pipeline %s", name)
		assert.Contains(t, got[name], w[1], "pipeline %s: the error's location", name)
		list, err := e.store.ListExecutions(ctx, name)
		require.NoError(t, err)
		assert.Empty(t, list, "pipeline %s ran", name)
		_, err = e.devCS.CoreV1().Namespaces().Get(ctx, name+"-dev", metav1.GetOptions{})
		assert.Error(t, err, "pipeline %s created its namespace", name)
	}

	// A few resyncs later, with the hostile files rendered again at each: memory stayed bounded.
	time.Sleep(3 * resync)
	peak := peakRSS(t, d.Pid())
	t.Logf("daemon peak RSS (VmHWM): %.0f MiB", float64(peak)/(1<<20))
	assert.Less(t, peak, int64(chartMemoryLimit), "the daemon's peak memory passed the chart's limit")
}

// TestSlowRenderBesideGood commits a good pipeline's release with a pipeline that sorts
// first and whose two stages each render past the deadline (a manifest within every limit
// that kustomize reads for longer). The good pipeline deploys through dev and prod; the slow
// one fails at the deadline, located at its manifests field, and nothing of it is applied.
//
// It once kept the good pipeline from ever starting: its two stages took both render slots
// (the machine has two CPUs), and the good pipeline's renders, queued behind them, got no slot
// before their own deadline. Now a pipeline's stages render one after the other.
func TestSlowRenderBesideGood(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, "beside-slow", guestbook, envOptions{})
	const slow = "a-slow"
	require.NoError(t, e.repo.WriteFiles(hostileFiles(t, slow, map[string]string{"slow.yaml": slowManifest(50, 10000, "1")})))
	t.Cleanup(func() {
		deleteNamespace(t, e.devCS, slow+"-dev")
		deleteNamespace(t, e.prodCS, slow)
	})
	d := e.startDaemon()
	sha := e.release(guestbook.tag, "a good release beside a slow one")
	e.requireCompleted(sha)
	assert.Equal(t, e.imageOf(guestbook.tag), image(t, e.prodCS, e.prodNS(), guestbook.service))

	var lastError *reconciler.PipelineError
	require.Eventually(t, func() bool {
		list, err := e.store.ListPipelines(ctx)
		if err != nil {
			return false
		}
		for _, p := range list {
			if p.Spec.Pipeline == slow && p.Status.LastError != nil && p.Status.LastError.Commit == sha {
				lastError = p.Status.LastError
			}
		}
		return lastError != nil
	}, time.Minute, 100*time.Millisecond, "the slow pipeline shows no error")
	assert.Contains(t, lastError.Message, "pipelines/"+slow+".yaml:")
	assert.Contains(t, lastError.Message, "limits.renderTimeout")
	list, err := e.store.ListExecutions(ctx, slow)
	require.NoError(t, err)
	assert.Empty(t, list, "the slow pipeline ran")
	t.Logf("daemon peak RSS (VmHWM): %.0f MiB", float64(peakRSS(t, d.Pid()))/(1<<20))
}

// BenchmarkGoodReleaseBesideHostile measures, through the real daemon, how long after a commit
// a good pipeline's release starts (its execution record exists) when the same commit
// changes another pipeline's manifests:
//
//   - alone: no other pipeline, for comparison;
//   - 50MB: a 50 MB ConfigMap, refused unread by limits.maxFileBytes;
//   - slow: a manifest within every limit that kustomize reads for longer than the render
//     deadline (10s), changed at each commit so that it is rendered again.
//
// git-ms is the part of it until the daemon had the commit from Git (its "new commit" log line;
// 0 when the execution was seen first). The repository is local, so the daemon's watch polls
// at once. Each iteration is one commit
// (a new tag for the good pipeline); the wait for the slow build to end, past its deadline, is
// not timed.
//
// Run it alone: go test ./internal/realapps -bench BenchmarkGoodReleaseBesideHostile -benchtime 3x -run '^$'
func BenchmarkGoodReleaseBesideHostile(b *testing.B) {
	for _, tc := range []struct {
		name    string
		hostile func(i int) string // the hostile manifest at iteration i
	}{
		{"alone", nil},
		{"50MB", func(i int) string { return bigConfigMap(50<<20, strconv.Itoa(i)) }},
		{"slow", func(i int) string { return slowManifest(50, 10000, strconv.Itoa(i)) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b, "bench-"+strings.ToLower(tc.name), guestbook, envOptions{})
			// The hostile pipeline sorts first: its stages are first in line to render.
			hostile := "a-hostile-" + strings.ToLower(tc.name)
			if tc.hostile != nil {
				require.NoError(b, e.repo.WriteFiles(hostileFiles(b, hostile, map[string]string{"hostile.yaml": tc.hostile(0)})))
			}
			d := e.startDaemon("--log-level", "info")
			e.requireCompleted(e.release(guestbook.tag, "the first release"))
			var total, git time.Duration
			i := 0
			for b.Loop() {
				i++
				b.StopTimer()
				if tc.name == "slow" {
					// The last commit's slow build runs on past its deadline (10s) for a few
					// seconds: the next commit's renders start from a quiet daemon.
					time.Sleep(15 * time.Second)
				}
				if tc.hostile != nil {
					require.NoError(b, e.repo.WriteFiles(map[string]string{"apps/" + hostile + "/hostile.yaml": tc.hostile(i)}))
				}
				require.NoError(b, e.repo.WriteFiles(map[string]string{"pipelines/" + e.name + ".yaml": e.pipeline(fmt.Sprintf("bench-%d", i))}))
				sha, err := e.repo.Commit(fmt.Sprintf("release %d", i))
				require.NoError(b, err)
				b.StartTimer()
				start := time.Now()
				var fetched time.Duration
				for len(e.deploys(sha)) == 0 {
					if time.Since(start) > 2*time.Minute {
						b.Fatalf("no execution of commit %s within 2m", short(sha))
					}
					if fetched == 0 && d.FindLog("msg", "new commit", "commit", sha[:12]) != nil {
						fetched = time.Since(start)
					}
					time.Sleep(5 * time.Millisecond)
				}
				total += time.Since(start)
				git += fetched
				b.StopTimer()
				e.requireCompleted(sha)
				b.StartTimer()
			}
			b.ReportMetric(total.Seconds()*1000/float64(b.N), "start-ms/op")
			b.ReportMetric(git.Seconds()*1000/float64(b.N), "git-ms/op")
		})
	}
}
