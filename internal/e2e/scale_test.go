package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"

	"ebb.dev/ebb/internal/daemontest"
	"ebb.dev/ebb/reconciler"
)

var scaleRuns int

// scalePipelines is how many pipelines BenchmarkScale runs: EBB_BENCH_PIPELINES, default 500.
func scalePipelines(b *testing.B) int {
	if s := os.Getenv("EBB_BENCH_PIPELINES"); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(b, err)
		return n
	}
	return 500
}

// BenchmarkScale runs N pipelines (EBB_BENCH_PIPELINES, default 500) of one app each (a
// Deployment of one pod and a Service, stages dev and prod) and measures, with the daemon's
// defaults but for an hour-long poll (the repository watch triggers each poll, as a webhook
// would):
//   - the initial sync: time until every execution is COMPLETED, how many FAILED, and the
//     API requests it took (in all, and per execution);
//   - a no-op commit (a README): the API requests it causes, by verb and resource;
//   - a commit that changes one app: the requests, and the time from the commit to that
//     app's dev Deployment having the new image (p50 over b.N commits);
//   - the daemon's resident memory at rest.
//
// EBB_BENCH_PIPELINES=500 go test ./internal/e2e -bench BenchmarkScale -benchtime 1x -run '^$' -timeout 60m
//
// With EBB_BENCH_HEAPPROFILE=file, the daemon's heap profile at rest is written to file; with
// EBB_BENCH_CPUPROFILE=file, its CPU profile of the sync's first 40 seconds.
func BenchmarkScale(b *testing.B) {
	n := scalePipelines(b)
	e := newEnv(b, "scale", envOptions{})
	name, files := scaleApps(b, e, "s", n)
	_, err := e.repo.CommitFiles(fmt.Sprintf("%d pipelines", n), files)
	require.NoError(b, err)

	start := time.Now()
	d := e.startDaemon("--interval", "1h", "--resync", "1h", "--log-level", "info", "--pprof")
	profiled := make(chan struct{})
	if path := os.Getenv("EBB_BENCH_CPUPROFILE"); path != "" {
		// Where the daemon's CPU goes in the sync's first 40s: go tool pprof -top $path
		go func() {
			defer close(profiled)
			if err := saveProfile(d.port, "profile?seconds=40", path); err != nil {
				b.Errorf("CPU profile: %v", err)
			}
		}()
	} else {
		close(profiled)
	}
	completed, failed := awaitExecutions(b, e, 30*time.Minute, func(x *reconciler.Execution) bool { return true }, n)
	initial := time.Since(start)
	syncRequests := requests(b, d.port)
	b.Logf("initial sync of %d pipelines: %s, %d COMPLETED, %d not; %.0f requests (%.1f per execution): %s",
		n, initial.Round(100*time.Millisecond), completed, failed, syncRequests.total(), syncRequests.total()/float64(n), syncRequests.top(8))
	b.Logf("  the daemon's CPU time in the sync: %.1f s of the 2 cores' %.0f s", scrape(b, d.port)["process_cpu_seconds_total"], 2*initial.Seconds())
	<-profiled
	list, err := e.store.ListExecutions(context.Background(), "")
	require.NoError(b, err)
	first, last := time.Duration(0), time.Duration(0)
	for i, x := range list {
		if at := x.CreationTimestamp.Sub(start); i == 0 || at < first {
			first = at
		}
		if x.Status.FinishedAt != nil {
			last = max(last, x.Status.FinishedAt.Sub(start))
		}
	}
	b.Logf("  first execution created after %s, last one finished after %s (times to the second)", first.Round(time.Second), last.Round(time.Second))
	b.Logf("  mean task durations: %s", taskDurations(d))
	// Each client has its own rate limit: the busiest one bounds the sync.
	for cluster, c := range requestsByCluster(b, d.port) {
		b.Logf("  client %s: %.0f requests: %s", cluster, c.total(), c.top(20))
	}
	// At rest: the rollouts' Deployment watches close 30s after the last rollout.
	time.Sleep(35 * time.Second)
	rss := procStatusMiB(b, d.Pid(), "VmRSS")
	b.Logf("  at rest: %.0f MiB resident, of which %.0f MiB anonymous (heap, stacks) and %.0f MiB of files (the binary's pages)",
		rss, procStatusMiB(b, d.Pid(), "RssAnon"), procStatusMiB(b, d.Pid(), "RssFile"))
	m := scrape(b, d.port)
	b.Logf("  Go at rest: heap %.0f MiB in use, next GC at %.0f MiB, %.0f MiB idle of which %.0f MiB released; stacks %.0f MiB, %.0f goroutines",
		m["go_memstats_heap_inuse_bytes"]/(1<<20), m["go_memstats_next_gc_bytes"]/(1<<20), m["go_memstats_heap_idle_bytes"]/(1<<20),
		m["go_memstats_heap_released_bytes"]/(1<<20), m["go_memstats_stack_inuse_bytes"]/(1<<20), m["go_goroutines"])
	if path := os.Getenv("EBB_BENCH_HEAPPROFILE"); path != "" {
		// What the daemon holds at rest: go tool pprof -sample_index=inuse_space $path
		require.NoError(b, saveProfile(d.port, "heap?gc=1", path))
	}

	// Commits that change nothing any pipeline reads: the first one after the sync also
	// checks every stage for drift for the first time since its rollout, the second is what
	// such a commit costs from then on.
	noopCommit := func(content string) requestCounts {
		before := requests(b, d.port)
		checks := sumPrefix(scrape(b, d.port), "ebb_drift_checks_total")
		_, err = e.repo.CommitFiles("a README", map[string]string{"README.md": content})
		require.NoError(b, err)
		// Each of the n pipelines checks its two stages: the commit's work is done then.
		require.Eventually(b, func() bool { return sumPrefix(scrape(b, d.port), "ebb_drift_checks_total") >= checks+float64(2*n) },
			5*time.Minute, 100*time.Millisecond, "the commit's drift checks did not end")
		time.Sleep(time.Second)
		return requests(b, d.port).minus(before)
	}
	firstNoop := noopCommit("nothing to deploy\n")
	noop := noopCommit("still nothing to deploy\n")

	// Commits that change one app: push to the dev Deployment's new image.
	var latency []time.Duration
	var oneApp requestCounts
	b.ResetTimer()
	for i := 0; i < max(b.N, 5); i++ { // at least 5 for a median, with -benchtime 1x
		app := name(i % n)
		tag := fmt.Sprintf("1.%d", i+1)
		w, err := e.devCS.AppsV1().Deployments(app+"-dev").Watch(context.Background(), metav1.ListOptions{FieldSelector: "metadata.name=web"})
		require.NoError(b, err)
		before := requests(b, d.port)
		at := time.Now()
		sha, err := e.repo.CommitFiles("release "+app+" "+tag, e.pipelineFiles(app, tag, 1))
		require.NoError(b, err)
		waitImage(b, w, "registry.example/"+app+":"+tag)
		latency = append(latency, time.Since(at))
		w.Stop()
		b.StopTimer()
		require.Eventually(b, func() bool {
			list, err := e.store.ListExecutions(context.Background(), app)
			if err != nil {
				return false
			}
			for _, x := range list {
				if x.Spec.Commit == sha && x.Status.Phase.Terminal() {
					return true
				}
			}
			return false
		}, 5*time.Minute, 100*time.Millisecond)
		time.Sleep(2 * time.Second)
		oneApp = requests(b, d.port).minus(before)
		b.StartTimer()
	}
	b.StopTimer()
	sort.Slice(latency, func(i, j int) bool { return latency[i] < latency[j] })
	b.ReportMetric(initial.Seconds(), "s-initial-sync")
	b.ReportMetric(float64(failed), "initial-not-completed")
	b.ReportMetric(syncRequests.total(), "requests-initial-sync")
	b.ReportMetric(syncRequests.total()/float64(n), "requests/execution")
	b.ReportMetric(firstNoop.total(), "requests-first-noop-commit")
	b.ReportMetric(noop.total(), "requests-noop-commit")
	b.ReportMetric(oneApp.total(), "requests-one-app-commit")
	b.ReportMetric(float64(latency[len(latency)/2].Microseconds())/1000, "ms-commit-to-spec-p50")
	b.ReportMetric(rss, "MiB-rss")
	b.Logf("first no-op commit: %s; no-op commit: %s; one-app commit: %s; commit to spec: %v", firstNoop.top(10), noop.top(10), oneApp.top(10), latency)
}

// requestCounts are the daemon's API requests by verb and resource (Lease renewals left
// out: the leader renews every 2s whatever happens).
type requestCounts map[string]float64

func requests(b *testing.B, port int) requestCounts {
	out := requestCounts{}
	for k, v := range scrape(b, port) {
		if !strings.HasPrefix(k, "ebb_kube_requests_total{") || strings.Contains(k, `resource="leases"`) {
			continue
		}
		out[label(k, "verb")+" "+label(k, "resource")] += v
	}
	return out
}

// scaleApps returns n pipelines of one app each for a benchmark: their names (prefix, a number
// of this run of the benchmark function, and i) and their files at image tag 1.0. The
// benchmark function runs more than once (b.N 1, then the asked for): each run has its own
// pipelines, as the namespaces of the last run are still being deleted when it ends.
func scaleApps(b *testing.B, e *env, prefix string, n int) (name func(i int) string, files map[string]string) {
	scaleRuns++
	run := scaleRuns
	name = func(i int) string { return fmt.Sprintf("%s%d-%04d", prefix, run, i) }
	files = map[string]string{}
	for i := range n {
		for path, content := range e.pipelineFiles(name(i), "1.0", 1) {
			files[path] = content
		}
		deleteStageNamespaces(b, e, name(i))
	}
	return name, files
}

// deleteStageNamespaces deletes pipeline's dev and prod namespaces when b ends.
func deleteStageNamespaces(b *testing.B, e *env, pipeline string) {
	b.Cleanup(func() {
		_ = e.devCS.CoreV1().Namespaces().Delete(context.Background(), pipeline+"-dev", metav1.DeleteOptions{})
		_ = e.prodCS.CoreV1().Namespaces().Delete(context.Background(), pipeline+"-prod", metav1.DeleteOptions{})
	})
}

// awaitExecutions waits until n executions that match ended, and returns how many of them
// COMPLETED and how many ended otherwise. It follows the records with a watch: listing
// hundreds of records twice a second would load the API server whose work it measures.
func awaitExecutions(b *testing.B, e *env, timeout time.Duration, match func(*reconciler.Execution) bool, n int) (completed, failed int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client := dynamic.NewForConfigOrDie(dev.Config).Resource(reconciler.ExecutionResource).Namespace(e.records)
	phases := map[string]reconciler.Status{}
	count := func() bool {
		completed, failed = 0, 0
		for _, p := range phases {
			switch {
			case p == reconciler.Completed:
				completed++
			case p.Terminal():
				failed++
			}
		}
		return completed+failed >= n
	}
	rv := ""
	for {
		w, err := client.Watch(ctx, metav1.ListOptions{ResourceVersion: rv})
		require.NoError(b, err, "watch the executions")
		for ev := range w.ResultChan() {
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			rv = u.GetResourceVersion()
			var x reconciler.Execution
			require.NoError(b, runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &x))
			if match(&x) {
				phases[x.Name] = x.Status.Phase
			}
			if count() {
				w.Stop()
				return completed, failed
			}
		}
		require.NoError(b, ctx.Err(), "%d executions did not end: %d COMPLETED, %d not", n, completed, failed)
	}
}

// taskDurations sums up the daemon's "task completed" log lines: the mean duration of each
// task, and how many ended.
func taskDurations(d *daemon) string {
	sum, count := map[string]time.Duration{}, map[string]int{}
	for _, line := range d.Lines(`"msg":"task completed"`) {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		task, _ := m["task"].(string)
		ns, _ := m["duration"].(float64)
		sum[task] += time.Duration(ns)
		count[task]++
	}
	var parts []string
	for task, n := range count {
		parts = append(parts, fmt.Sprintf("%s %s (%d)", task, (sum[task]/time.Duration(n)).Round(time.Millisecond), n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// requestsByCluster are the daemon's API requests (Lease renewals left out) by the client
// that sent them: "home" (the records and Events of the cluster ebb runs in) or a cluster's name.
func requestsByCluster(b *testing.B, port int) map[string]requestCounts {
	out := map[string]requestCounts{}
	for k, v := range scrape(b, port) {
		if !strings.HasPrefix(k, "ebb_kube_requests_total{") || strings.Contains(k, `resource="leases"`) {
			continue
		}
		c := out[label(k, "cluster")]
		if c == nil {
			c = requestCounts{}
			out[label(k, "cluster")] = c
		}
		c[label(k, "verb")+" "+label(k, "resource")] += v
	}
	return out
}

func label(series, name string) string {
	i := strings.Index(series, name+`="`)
	if i < 0 {
		return ""
	}
	rest := series[i+len(name)+2:]
	return rest[:strings.IndexByte(rest, '"')]
}

func (c requestCounts) minus(o requestCounts) requestCounts {
	out := requestCounts{}
	for k, v := range c {
		if d := v - o[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

func (c requestCounts) total() float64 {
	t := 0.0
	for _, v := range c {
		t += v
	}
	return t
}

// top lists the n largest counts.
func (c requestCounts) top(n int) string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return c[keys[i]] > c[keys[j]] })
	var parts []string
	for i, k := range keys {
		if i == n {
			break
		}
		parts = append(parts, fmt.Sprintf("%s=%.0f", k, c[k]))
	}
	return strings.Join(parts, ", ")
}

func sumPrefix(m map[string]float64, name string) float64 {
	t := 0.0
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			t += v
		}
	}
	return t
}

// BenchmarkScaleRollback measures how fast a release whose pods crash-loop is rolled back
// while N pipelines (EBB_BENCH_PIPELINES, default 500) sync for the first time, with the
// daemon's defaults: one more pipeline runs a verified release; the N are committed; once a
// tenth of them ended (the sync is in full swing), a release of the first one whose pods
// crash-loop is committed. It reports the time from that commit to its execution ending
// ROLLBACK_COMPLETED, and, from the execution's status changes (seen through a watch), when
// it started RUNNING and ROLLING_BACK; and the time the whole sync took.
//
// EBB_BENCH_PIPELINES=500 go test ./internal/e2e -bench BenchmarkScaleRollback -benchtime 1x -run '^$' -timeout 60m
//
// EBB_BENCH_DAEMON_ARGS adds flags to the daemon's (space-separated), for a diagnostic run
// off the defaults: with "--kube-qps 100000 --kube-burst 100000", whether the client rate
// limits are where the rollback's time goes.
func BenchmarkScaleRollback(b *testing.B) {
	n := scalePipelines(b)
	e := newEnv(b, "scalerb", envOptions{})
	_, files := scaleApps(b, e, "r", n)
	crash := fmt.Sprintf("r%d-crash", scaleRuns)
	deleteStageNamespaces(b, e, crash)
	good, err := e.repo.CommitFiles("release "+crash+" 1.0", e.pipelineFiles(crash, "1.0", 1))
	require.NoError(b, err)
	d := e.startDaemon(append([]string{"--interval", "1h", "--resync", "1h", "--log-level", "info"}, strings.Fields(os.Getenv("EBB_BENCH_DAEMON_ARGS"))...)...)
	daemontest.WaitExecution(b, e.store, crash, good, reconciler.Completed)
	// The same while nothing else runs, to compare.
	idle, _ := crashRelease(b, e, crash, "1.1-broken")

	start := time.Now()
	synced, err := e.repo.CommitFiles(fmt.Sprintf("%d pipelines", n), files)
	require.NoError(b, err)
	// The sync's executions: a later commit may queue more of the same pipelines.
	others := func(x *reconciler.Execution) bool { return x.Spec.Pipeline != crash && x.Spec.Commit == synced }
	awaitExecutions(b, e, 30*time.Minute, others, n/10)

	waitsBefore := scrape(b, d.port)
	seen, at := crashRelease(b, e, crash, "2.0-broken")
	waits := scrape(b, d.port)
	rolledBack := seen[reconciler.RollbackCompleted]
	list, err := e.store.ListExecutions(context.Background(), "")
	require.NoError(b, err)
	ended := 0
	for _, x := range list {
		if others(&x) && x.Status.Phase.Terminal() {
			ended++
		}
	}
	completed, failed := awaitExecutions(b, e, 30*time.Minute, others, n)
	took := time.Since(start)
	b.ReportMetric(rolledBack.Seconds(), "s-commit-to-rollback-completed")
	b.ReportMetric(seen[reconciler.Running].Seconds(), "s-commit-to-running")
	b.ReportMetric(seen[reconciler.RollingBack].Seconds(), "s-commit-to-rolling-back")
	b.ReportMetric(took.Seconds(), "s-sync")
	b.ReportMetric(float64(failed), "sync-not-completed")
	b.ReportMetric(idle[reconciler.RollbackCompleted].Seconds(), "s-idle-commit-to-rollback-completed")
	b.Logf("with no other pipeline syncing: RUNNING after %s, ROLLING_BACK after %s, ROLLBACK_COMPLETED after %s",
		idle[reconciler.Running].Round(10*time.Millisecond), idle[reconciler.RollingBack].Round(10*time.Millisecond), idle[reconciler.RollbackCompleted].Round(10*time.Millisecond))
	b.Logf("crash-looping release committed %s after the sync of %d pipelines began: RUNNING after %s, ROLLING_BACK after %s, ROLLBACK_COMPLETED after %s, when %d of the %d had ended; the sync took %s, %d COMPLETED, %d not",
		at.Sub(start).Round(100*time.Millisecond), n, seen[reconciler.Running].Round(10*time.Millisecond), seen[reconciler.RollingBack].Round(10*time.Millisecond),
		rolledBack.Round(10*time.Millisecond), ended, n, took.Round(100*time.Millisecond), completed, failed)
	b.Logf("  the crash-looping release during the sync, from its commit: %s", timeline(d, crash, at))
	b.Logf("  every request of the daemon from 1s before that commit to the rollback's end: %s", latencies(waitsBefore, waits))
}

// latencies says, from two scrapes of the daemon's metrics, how many requests of each
// priority were sent in between, and how long they waited for their client's rate limit and
// for the API server, on average.
func latencies(before, after map[string]float64) string {
	var parts []string
	for _, p := range []string{"urgent", "normal"} {
		delta := func(name string) float64 {
			series := name + `{priority="` + p + `"}`
			return after[series] - before[series]
		}
		n := delta("ebb_kube_rate_limit_wait_seconds_count")
		if n == 0 {
			parts = append(parts, "no "+p+" request")
			continue
		}
		mean := func(name string) time.Duration {
			return time.Duration(delta(name+"_sum") / delta(name+"_count") * float64(time.Second)).Round(100 * time.Microsecond)
		}
		parts = append(parts, fmt.Sprintf("%.0f %s, waited %s for the rate limit and %s for the API server on average",
			n, p, mean("ebb_kube_rate_limit_wait_seconds"), mean("ebb_kube_request_duration_seconds")))
	}
	return strings.Join(parts, "; ")
}

// timeline lists, from the daemon's log, when after since pipeline's executions changed
// status and began and ended each task: where the time of a release goes.
func timeline(d *daemon, pipeline string, since time.Time) string {
	var parts []string
	for _, line := range d.Lines(`"pipeline":"` + pipeline + `"`) {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		ts, _ := m["time"].(string)
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil || at.Before(since) {
			continue
		}
		what, _ := m["msg"].(string)
		switch what {
		case "execution status":
			what = fmt.Sprintf("%v %v", m["execution"], m["status"])
		case "task started", "task completed":
			what = fmt.Sprintf("%v %s %v", m["execution"], strings.TrimPrefix(what, "task "), m["task"])
		default:
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s", at.Sub(since).Round(10*time.Millisecond), what))
	}
	return strings.Join(parts, "; ")
}

// crashRelease commits a release of pipeline whose pods crash-loop (image tag tag, which must
// contain "broken"), waits for its execution to end ROLLBACK_COMPLETED, and returns when,
// after the commit, the execution first had each status, as a watch saw them, and when it
// committed.
func crashRelease(b *testing.B, e *env, pipeline, tag string) (map[reconciler.Status]time.Duration, time.Time) {
	type change struct {
		phase reconciler.Status
		at    time.Time
	}
	changes := make(chan change, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu  sync.Mutex
		bad string
	)
	go func() {
		_ = e.store.WatchExecutions(ctx, pipeline, func(x *reconciler.Execution) bool {
			mu.Lock()
			defer mu.Unlock()
			if x.Spec.Kind == reconciler.KindDeploy && bad != "" && x.Spec.Commit == bad {
				changes <- change{x.Status.Phase, time.Now()}
			}
			return false
		})
	}()
	time.Sleep(time.Second) // the watch is established
	mu.Lock()
	at := time.Now()
	var err error
	bad, err = e.repo.CommitFiles("release "+pipeline+" "+tag, e.pipelineFiles(pipeline, tag, 1))
	mu.Unlock()
	require.NoError(b, err)
	seen := map[reconciler.Status]time.Duration{}
	timeout := time.After(20 * time.Minute)
	for seen[reconciler.RollbackCompleted] == 0 {
		select {
		case c := <-changes:
			if _, ok := seen[c.phase]; !ok {
				seen[c.phase] = c.at.Sub(at)
			}
			require.False(b, c.phase.Terminal() && c.phase != reconciler.RollbackCompleted, "the crash-looping release ended %s", c.phase)
		case <-timeout:
			b.Fatalf("the crash-looping release %s was not rolled back within 20m; seen: %v", tag, seen)
		}
	}
	return seen, at
}

// saveProfile writes the daemon's profile /debug/pprof/<which> to path. A daemon just
// started is given 10s to listen.
func saveProfile(port int, which, path string) error {
	url := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/%s", port, which)
	resp, err := http.Get(url)
	for deadline := time.Now().Add(10 * time.Second); err != nil && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		resp, err = http.Get(url)
	}
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(path, body, 0o644)
}
