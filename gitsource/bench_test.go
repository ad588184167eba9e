package gitsource

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ebb.dev/ebb/internal/gitserver"
)

// The benchmark repository: the size the issue asks the source to handle cheaply.
const (
	benchCommits = 2000
	benchFiles   = 1000
)

// Environment variables that turn the test binary into a helper process, so the Git server's
// CPU and memory are not counted as the source's.
const (
	envHelperServer = "EBB_GITSOURCE_BENCH_SERVER" // serve this root over smart HTTP
	envHelperRSS    = "EBB_GITSOURCE_BENCH_RSS"    // run the source workload against this URL, print VmHWM
)

func TestMain(m *testing.M) {
	switch {
	case os.Getenv(envHelperServer) != "":
		os.Exit(runHelperServer(os.Getenv(envHelperServer)))
	case os.Getenv(envHelperRSS) != "":
		os.Exit(runRSSWorkload(os.Getenv(envHelperRSS)))
	}
	code := m.Run()
	if benchRoot != "" {
		_ = os.RemoveAll(benchRoot)
	}
	os.Exit(code)
}

var (
	benchOnce sync.Once
	benchRoot string
	benchErr  error
)

// benchRepo returns a directory holding bare repository big.git with the benchmark history,
// made once per test binary run with git fast-import (a few seconds).
func benchRepo(b *testing.B) string {
	b.Helper()
	benchOnce.Do(func() {
		benchRoot, benchErr = os.MkdirTemp("", "ebb-gitsource-bench-")
		if benchErr != nil {
			return
		}
		dir := filepath.Join(benchRoot, "repos", "big.git")
		if _, benchErr = gitserver.Git("", "init", "--quiet", "--bare", "--initial-branch=main", dir); benchErr != nil {
			return
		}
		start := time.Now()
		benchErr = gitserver.ImportSyntheticHistory(dir, benchCommits, benchFiles)
		fmt.Fprintf(os.Stderr, "generated %d commits × %d files in %v\n", benchCommits, benchFiles, time.Since(start).Round(time.Millisecond))
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return filepath.Join(benchRoot, "repos")
}

// helperServer is a Git server in a child process.
type helperServer struct {
	url, counts string
	cmd         *exec.Cmd
	stdin       io.Closer
}

// startHelperServer serves root from a child process and stops it when b ends.
func startHelperServer(b *testing.B, root string) *helperServer {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envHelperServer+"="+root)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	h := &helperServer{cmd: cmd, stdin: stdin}
	b.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("helper server: %v", err)
	}
	if _, err := fmt.Sscanf(line, "%s %s", &h.url, &h.counts); err != nil {
		b.Fatalf("helper server said %q: %v", line, err)
	}
	return h
}

// requests returns the helper server's request count of kind.
func (h *helperServer) requests(b *testing.B, kind string) int64 {
	resp, err := http.Get(h.counts + "?kind=" + kind)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var n int64
	if err := json.NewDecoder(resp.Body).Decode(&n); err != nil {
		b.Fatal(err)
	}
	return n
}

// runHelperServer serves root until stdin closes, after printing the base URL of the Git
// server and of its request counts.
func runHelperServer(root string) int {
	srv, err := gitserver.New(root, gitserver.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		_ = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_ = json.NewEncoder(w).Encode(srv.Requests(r.URL.Query().Get("kind")))
		}))
	}()
	fmt.Printf("%s http://%s/\n", strings.TrimSuffix(srv.URL("big"), "/big.git"), l.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// benchSource returns a source on url that has cloned it.
func benchSource(b *testing.B, url string, mutate ...func(*Options)) *Source {
	b.Helper()
	o := DefaultOptions()
	o.URL, o.Branch, o.Path, o.CacheDir = url, "main", "pipelines", b.TempDir()
	for _, m := range mutate {
		m(&o)
	}
	s, err := New(o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	start := time.Now()
	if _, _, err := s.Poll(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Logf("first poll (clone of %d commits, %d files): %v", benchCommits, benchFiles, time.Since(start).Round(time.Millisecond))
	return s
}

// cpuTime is the user plus system CPU this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPollUnchanged: a poll that finds no change, against a smart-HTTP server in
// another process. Reports the source's CPU per poll and the requests per poll.
func BenchmarkPollUnchanged(b *testing.B) {
	root := benchRepo(b)
	srv := startHelperServer(b, root)
	s := benchSource(b, srv.url+"/big.git")
	ctx := context.Background()
	infoRefs, uploads := srv.requests(b, "info/refs"), srv.requests(b, "git-upload-pack")
	cpu := cpuTime()
	n := 0
	for b.Loop() {
		_, changed, err := s.Poll(ctx)
		if err != nil || changed {
			b.Fatalf("poll: changed=%v err=%v", changed, err)
		}
		n++
	}
	cpuPerPoll := cpuTime() - cpu
	b.ReportMetric(float64(cpuPerPoll.Microseconds())/1000/float64(n), "cpu-ms/op")
	b.ReportMetric(float64(srv.requests(b, "info/refs")-infoRefs)/float64(n), "round-trips/op")
	b.ReportMetric(float64(srv.requests(b, "git-upload-pack")-uploads)/float64(n), "fetches/op")
}

// BenchmarkPushToSnapshot: from a push to the new snapshot reaching Run's onChange, when a
// webhook or the fsnotify watch triggers the poll (the interval is an hour). Reports p50 and
// p95. For the webhook the clock starts when the push is done (when a host sends the hook);
// for fsnotify it starts before `git push` runs, so the push itself is counted.
func BenchmarkPushToSnapshot(b *testing.B) {
	root := benchRepo(b)
	bare := filepath.Join(root, "big.git")
	work, err := gitserver.Clone(bare, filepath.Join(b.TempDir(), "work"))
	if err != nil {
		b.Fatal(err)
	}
	srv := startHelperServer(b, root)

	b.Run("trigger=webhook", func(b *testing.B) {
		s := benchSource(b, srv.url+"/big.git", func(o *Options) { o.Interval = time.Hour })
		o := DefaultWebhookOptions()
		o.Secret = []byte(webhookSecret)
		hook, err := NewWebhook(s, o)
		if err != nil {
			b.Fatal(err)
		}
		hookSrv := httptest.NewServer(hook)
		defer hookSrv.Close()
		body := []byte(`{"ref":"refs/heads/main"}`)
		sig := SignSHA256([]byte(webhookSecret), body)
		measurePushToSnapshot(b, s, work, func() {
			req, _ := http.NewRequest(http.MethodPost, hookSrv.URL, strings.NewReader(string(body)))
			req.Header.Set("X-GitHub-Event", "push")
			req.Header.Set("X-Hub-Signature-256", sig)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
		}, false)
	})
	b.Run("trigger=fsnotify", func(b *testing.B) {
		s := benchSource(b, bare, func(o *Options) { o.Interval = time.Hour })
		w, err := NewWatcher(bare, s, nil)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() { _ = w.Run(ctx) }()
		measurePushToSnapshot(b, s, work, func() {}, true)
	})
}

// measurePushToSnapshot pushes a commit per iteration and times how long until Run delivers
// it, calling notify after the push.
func measurePushToSnapshot(b *testing.B, s *Source, work *gitserver.WorkTree, notify func(), clockBeforePush bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := make(chan *Snapshot, 16)
	go func() { _ = s.Run(ctx, func(s *Snapshot) { changes <- s }) }()
	var latencies []time.Duration
	i := 0
	for b.Loop() {
		i++
		sha, err := work.CommitFiles(fmt.Sprintf("bench %d", i), map[string]string{
			gitserver.SyntheticPath(i % benchFiles): gitserver.SyntheticPipeline(i%benchFiles, 100000+i),
		})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := work.Push(); err != nil {
			b.Fatal(err)
		}
		if !clockBeforePush {
			start = time.Now()
		}
		notify()
	wait:
		for {
			select {
			case snap := <-changes:
				if snap.Commit == sha {
					break wait
				}
			case <-time.After(time.Minute):
				b.Fatalf("push %s not seen", sha)
			}
		}
		latencies = append(latencies, time.Since(start))
	}
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.95), "p95-ms")
}

// BenchmarkSnapshotReadAll: the planner's read of every pipeline file of a snapshot.
func BenchmarkSnapshotReadAll(b *testing.B) {
	root := benchRepo(b)
	s := benchSource(b, filepath.Join(root, "big.git"))
	snap := s.Last()
	for b.Loop() {
		n := 0
		err := fs.WalkDir(snap.FS, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			_, err = fs.ReadFile(snap.FS, p)
			n++
			return err
		})
		if err != nil || n != benchFiles {
			b.Fatalf("read %d files: %v", n, err)
		}
	}
}

// BenchmarkSourceRSS runs the source alone in a child process (the Git server in another):
// clone, 200 unchanged polls, one change, and a read of all 1,000 files. Reports the child's
// peak RSS (VmHWM), with the default shallow clone and with the whole history.
func BenchmarkSourceRSS(b *testing.B) {
	root := benchRepo(b)
	srv := startHelperServer(b, root)
	for _, depth := range []int{DefaultOptions().Depth, 0} {
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			var peak float64
			for b.Loop() {
				cmd := exec.Command(os.Args[0], "-test.run=^$")
				cmd.Env = append(os.Environ(), envHelperRSS+"="+srv.url+"/big.git", "EBB_BENCH_CACHE="+b.TempDir(),
					"EBB_BENCH_WORK="+filepath.Join(root, "big.git"), "EBB_BENCH_DEPTH="+strconv.Itoa(depth))
				cmd.Stderr = os.Stderr
				out, err := cmd.Output()
				if err != nil {
					b.Fatalf("rss workload: %v", err)
				}
				kib, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
				if err != nil {
					b.Fatalf("rss workload said %q", out)
				}
				peak = max(peak, kib/1024)
			}
			b.ReportMetric(peak, "peak-rss-MiB")
		})
	}
}

// runRSSWorkload is the child of BenchmarkSourceRSS. It prints its VmHWM in KiB.
func runRSSWorkload(url string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "rss workload:", err); return 1 }
	o := DefaultOptions()
	o.URL, o.Branch, o.Path, o.CacheDir = url, "main", "pipelines", os.Getenv("EBB_BENCH_CACHE")
	o.Depth, _ = strconv.Atoi(os.Getenv("EBB_BENCH_DEPTH"))
	s, err := New(o)
	if err != nil {
		return fail(err)
	}
	defer s.Close()
	ctx := context.Background()
	if _, _, err := s.Poll(ctx); err != nil {
		return fail(err)
	}
	phase("clone")
	for range 200 {
		if _, _, err := s.Poll(ctx); err != nil {
			return fail(err)
		}
	}
	phase("200 polls")
	// One change, pushed with git straight into the served repository.
	bare := os.Getenv("EBB_BENCH_WORK")
	tmp, err := os.MkdirTemp("", "ebb-rss-work-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)
	w, err := gitserver.Clone(bare, filepath.Join(tmp, "w"))
	if err != nil {
		return fail(err)
	}
	if _, err := w.CommitAndPush("rss", map[string]string{gitserver.SyntheticPath(1): "changed"}); err != nil {
		return fail(err)
	}
	snap, changed, err := s.Poll(ctx)
	if err != nil || !changed {
		return fail(fmt.Errorf("change not seen: %v", err))
	}
	phase("change")
	err = fs.WalkDir(snap.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		_, err = fs.ReadFile(snap.FS, p)
		return err
	})
	if err != nil {
		return fail(err)
	}
	phase("read all")
	hwm := procStatus("VmHWM")
	if hwm == "" {
		return fail(fmt.Errorf("no VmHWM in /proc/self/status"))
	}
	fmt.Println(hwm)
	return 0
}

// procStatus returns a field of /proc/self/status in kB, or "".
func procStatus(field string) string {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSuffix(strings.TrimSpace(v), " kB")
		}
	}
	return ""
}

// phase reports memory after a phase of the RSS workload when EBB_BENCH_DEBUG is set.
func phase(name string) {
	if os.Getenv("EBB_BENCH_DEBUG") == "" {
		return
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.HeapInuse
	runtime.GC()
	runtime.ReadMemStats(&ms)
	fmt.Fprintf(os.Stderr, "%-10s VmHWM=%s kB VmRSS=%s kB heapInuse=%d MiB live=%d MiB sys=%d MiB\n", name,
		procStatus("VmHWM"), procStatus("VmRSS"), before>>20, ms.HeapInuse>>20, ms.Sys>>20)
}
