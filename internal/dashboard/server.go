// Package dashboard serves ebb's Executions page: every execution, one execution's stages
// and tasks, and one pipeline's releases, with live updates and, when allowed, approvals.
//
// It reads Execution, StageLedger, Pipeline and Approval objects through the client it is
// given: `ebb dashboard` passes one with the user's own kubeconfig, so Kubernetes RBAC is the
// access control and the API server's admission policy decides who may approve. The daemon
// can serve the same pages read-only with its own identity.
//
// Pages are rendered on the server from html/template and work without JavaScript; a small
// embedded script subscribes to a server-sent event stream, fed by a watch on executions, and
// updates the open page in place. Nothing is fetched from elsewhere at run time.
package dashboard

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/reconciler"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Options configure a dashboard Server.
type Options struct {
	// Client reads (and, for approvals, writes) ebb's records. `ebb dashboard` builds it from
	// the user's kubeconfig, so the user's RBAC applies.
	Client dynamic.Interface
	// Kube asks the API server who the user is, to record a decision in their name. Nil, or
	// ReadOnly, makes approvals impossible.
	Kube kubernetes.Interface
	// Namespace holds the records.
	Namespace string
	// ReadOnly serves the pages without approval forms and refuses every POST.
	ReadOnly bool
	// Logger receives the server's errors; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// PageSize is how many executions the list shows before "show more"; 0 is 200.
	PageSize int
}

// Server is the dashboard's HTTP handler. Start it before serving.
type Server struct {
	opts  Options
	feed  *feed
	store *reconciler.Store
	pages map[string]*template.Template
	mux   *http.ServeMux
	// handler is mux behind compression.
	handler http.Handler
	// csrfKey signs the CSRF tokens of this server's forms.
	csrfKey []byte
	// stopped is closed when the context given to Start ends; it ends the event streams.
	stopped <-chan struct{}
}

// New returns a Server for opts; call Start to begin watching.
func New(opts Options) (*Server, error) {
	if opts.Client == nil {
		return nil, errors.New("dashboard: no client")
	}
	if opts.Namespace == "" {
		return nil, errors.New("dashboard: no namespace")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.PageSize <= 0 {
		opts.PageSize = 200
	}
	if opts.Kube == nil {
		opts.ReadOnly = true
	}
	pages, err := parseTemplates()
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	s := &Server{opts: opts, feed: newFeed(), store: reconciler.NewStore(opts.Client, opts.Namespace), pages: pages, csrfKey: key}
	s.routes()
	return s, nil
}

// Start watches the namespace's executions until ctx ends. It returns once the first list
// arrived, or with the error that prevents it (say, the user may not list executions).
func (s *Server) Start(ctx context.Context) error {
	s.stopped = ctx.Done()
	if err := s.feed.run(ctx, s.opts.Client, s.opts.Namespace, 0); err != nil {
		return err
	}
	if err := s.feed.watchPipelines(ctx, s.opts.Client, s.opts.Namespace); err != nil {
		s.opts.Logger.Info("pipeline pages update with their executions only", "err", err)
	}
	return nil
}

func (s *Server) routes() {
	static, _ := fs.Sub(staticFS, "static")
	s.mux = http.NewServeMux()
	s.mux.Handle("GET /static/", cacheFor(time.Hour, http.StripPrefix("/static/", http.FileServerFS(static))))
	s.mux.HandleFunc("GET /{$}", s.handleExecutions)
	s.mux.HandleFunc("GET /executions/{name}", s.handleExecution)
	s.mux.HandleFunc("POST /executions/{name}/decision", s.handleDecision)
	s.mux.HandleFunc("GET /pipelines/{name}", s.handlePipeline)
	s.mux.HandleFunc("GET /events", s.handleEvents)
	s.handler = gzipped(s.mux)
}

// ServeHTTP serves the dashboard.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	s.handler.ServeHTTP(w, r)
}

func cacheFor(d time.Duration, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", fmt.Sprintf("max-age=%d", int(d.Seconds())))
		h.ServeHTTP(w, r)
	})
}

// render writes page with data, or a plain error page when the template fails.
func (s *Server) render(w http.ResponseWriter, status int, page string, data any) {
	t, ok := s.pages[page]
	if !ok {
		http.Error(w, "no page "+page, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := t.ExecuteTemplate(w, "layout", data); err != nil {
		s.opts.Logger.Error("render page", "page", page, "err", err)
	}
}

// errorPage renders msg on the error page with status.
func (s *Server) errorPage(w http.ResponseWriter, status int, title, msg string) {
	s.render(w, status, "error", &errorView{page: page{Title: title}, Message: msg})
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
