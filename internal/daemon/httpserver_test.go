package daemon

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/gitsource"
)

// serve runs the daemon's HTTP server with timeouts around h on a loopback port, until the
// test ends.
func serve(t testing.TB, h http.Handler, timeouts serverTimeouts) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := newHTTPServer(h, timeouts)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return l.Addr().String()
}

// closedWithin reads from conn until the server closes it, ignoring any answer, and reports
// whether that happened before the guard ran out.
func closedWithin(conn net.Conn, guard time.Duration) bool {
	_ = conn.SetReadDeadline(time.Now().Add(guard))
	_, err := io.Copy(io.Discard, conn)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// TestServerCutsOffSlowClients checks the server's timeouts with real connections: a header
// that never ends, a body sent a byte now and then, and an idle keep-alive connection are
// each closed by the server, where without the timeouts they would be held for as long as
// the client likes (the guard here is ten times the timeout).
func TestServerCutsOffSlowClients(t *testing.T) {
	timeouts := serverTimeouts{readHeader: 300 * time.Millisecond, read: 500 * time.Millisecond, write: time.Second, idle: 300 * time.Millisecond}
	addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write([]byte("ok"))
	}), timeouts)
	dial := func() net.Conn {
		conn, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		return conn
	}

	t.Run("a header that never ends", func(t *testing.T) {
		conn := dial()
		_, err := io.WriteString(conn, "POST /webhook HTTP/1.1\r\nHost: ebb\r\n")
		require.NoError(t, err)
		assert.True(t, closedWithin(conn, 10*timeouts.readHeader))
	})
	t.Run("a body a byte at a time", func(t *testing.T) {
		conn := dial()
		_, err := io.WriteString(conn, "POST /webhook HTTP/1.1\r\nHost: ebb\r\nContent-Length: 1000\r\n\r\n")
		require.NoError(t, err)
		stop := make(chan struct{})
		defer close(stop)
		go func() { // a byte every 50ms: the whole body would take 50s
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
					if _, err := conn.Write([]byte("x")); err != nil {
						return
					}
				}
			}
		}()
		assert.True(t, closedWithin(conn, 10*timeouts.read))
	})
	t.Run("an idle keep-alive connection", func(t *testing.T) {
		conn := dial()
		_, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: ebb\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.True(t, closedWithin(conn, 10*timeouts.idle))
	})
}

// zeros is an endless source of zero bytes, so that a client can send 10 MiB without holding
// them.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// peakRSS returns the process's peak resident set since the last resetPeakRSS, in bytes.
func peakRSS(tb testing.TB) uint64 {
	data, err := os.ReadFile("/proc/self/status")
	require.NoError(tb, err)
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			require.NoError(tb, err)
			return kb << 10
		}
	}
	tb.Fatal("no VmHWM in /proc/self/status")
	return 0
}

// resetPeakRSS starts a new peak (Linux: writing 5 to clear_refs resets VmHWM).
func resetPeakRSS(tb testing.TB) {
	require.NoError(tb, os.WriteFile("/proc/self/clear_refs", []byte("5"), 0))
}

// BenchmarkWebhookFlood sends 100 concurrent 10 MiB webhook requests to the daemon's HTTP
// server and webhook, as the attacker did (24 such took the daemon from 116 MB to
// 1.2 GB), and reports the process's peak RSS (peak-rss-MiB) and heap (peak-heap-MiB) while
// they are answered; it fails above the chart's 512 Mi. The process holds both the 100
// clients, which stream their bodies, and the server.
//
//   - unsigned: no signature header: refused before the body is read;
//   - badsig: a well-formed but wrong signature: 8 at a time are hashed up to the 1 MiB limit
//     and answered 413, the others 503 at once.
func BenchmarkWebhookFlood(b *testing.B) {
	for _, tc := range []struct {
		name string
		sign bool
	}{{"unsigned", false}, {"badsig", true}} {
		b.Run(tc.name, func(b *testing.B) {
			wopts := gitsource.DefaultWebhookOptions()
			wopts.Secret = []byte("the webhook secret")
			hook, err := gitsource.NewWebhook(nopTrigger{}, wopts)
			require.NoError(b, err)
			mux := http.NewServeMux()
			mux.Handle("/webhook", hook)
			url := "http://" + serve(b, mux, defaultServerTimeouts) + "/webhook"
			client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: 100}}
			var peakHeap atomic.Uint64
			codes := map[string]int{}
			var mu sync.Mutex
			resetPeakRSS(b)
			stop := sampleHeap(&peakHeap)
			for b.Loop() {
				var wg sync.WaitGroup
				for range 100 {
					wg.Go(func() {
						req, _ := http.NewRequest(http.MethodPost, url, io.LimitReader(zeros{}, 10<<20))
						req.ContentLength = 10 << 20
						req.Header.Set("X-GitHub-Event", "push")
						if tc.sign {
							req.Header.Set("X-Hub-Signature-256", "sha256="+strings.Repeat("ab", 32))
						}
						resp, err := client.Do(req)
						what := "connection closed early"
						if err == nil {
							_, _ = io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
							what = strconv.Itoa(resp.StatusCode)
						}
						mu.Lock()
						codes[what]++
						mu.Unlock()
					})
				}
				wg.Wait()
			}
			stop()
			rss := peakRSS(b)
			b.ReportMetric(float64(rss)/(1<<20), "peak-rss-MiB")
			b.ReportMetric(float64(peakHeap.Load())/(1<<20), "peak-heap-MiB")
			b.Logf("answers: %v", codes)
			if codes["200"]+codes["202"] > 0 {
				b.Fatalf("an unauthenticated request was accepted: %v", codes)
			}
			if rss > 512<<20 {
				b.Fatalf("peak RSS %d MiB is over the chart's 512 Mi", rss>>20)
			}
		})
	}
}

type nopTrigger struct{}

func (nopTrigger) Trigger() {}

// sampleHeap records the peak heap in use until the returned stop is called.
func sampleHeap(peak *atomic.Uint64) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() { close(done); <-finished }
}

// TestProfilingEndpoints: with profiling on, the server answers Go's heap profile (what a
// memory investigation reads with go tool pprof); without, the path is not served.
func TestProfilingEndpoints(t *testing.T) {
	get := func(addr, path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
	on := http.NewServeMux()
	handleProfiling(on)
	code, body := get(serve(t, on, defaultServerTimeouts), "/debug/pprof/heap?debug=1")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "heap profile:")
	assert.Contains(t, body, "# HeapInuse =")

	code, _ = get(serve(t, http.NewServeMux(), defaultServerTimeouts), "/debug/pprof/heap")
	assert.Equal(t, http.StatusNotFound, code)
}
