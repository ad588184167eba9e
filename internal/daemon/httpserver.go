package daemon

import (
	"net/http"
	"net/http/pprof"
	"time"
)

// serverTimeouts bound how long one client may hold a connection of the daemon's HTTP server:
// a request's header and whole body must arrive within readHeader and read, its answer leave
// within write, and an idle keep-alive connection is closed after idle. A client sending a
// byte now and then (the webhook is reachable by anyone the Ingress lets in) is cut off, not
// served for minutes.
type serverTimeouts struct {
	readHeader, read, write, idle time.Duration
}

// defaultServerTimeouts suit the server's requests, all small: a scrape of /metrics, a probe,
// a webhook of at most 1 MiB (whose body the webhook bounds to 10s itself).
var defaultServerTimeouts = serverTimeouts{readHeader: 10 * time.Second, read: 30 * time.Second, write: 30 * time.Second, idle: 2 * time.Minute}

// maxHeaderBytes bounds a request's header: none of the server's requests needs more.
const maxHeaderBytes = 64 << 10

// newHTTPServer returns the server of the daemon's metrics, health and webhook endpoints.
func newHTTPServer(h http.Handler, t serverTimeouts) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.readHeader,
		ReadTimeout:       t.read,
		WriteTimeout:      t.write,
		IdleTimeout:       t.idle,
		MaxHeaderBytes:    maxHeaderBytes,
	}
}

// handleProfiling serves Go's runtime profiles under /debug/pprof/ (heap, goroutine, CPU
// profile, ...), to see what the daemon holds and spends: `go tool pprof
// http://HOST:8080/debug/pprof/heap`. Off by default: a profile shows the process's insides
// (not its secrets, but names of everything it manages), and a CPU profile costs while it runs.
func handleProfiling(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}
