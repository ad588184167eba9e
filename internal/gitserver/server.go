// Package gitserver serves bare Git repositories over smart HTTP with `git http-backend`, the
// real Git server, behind optional basic auth; and drives work trees with the git CLI the way a
// user does (commit, push, revert). Tests of anything that reads Git use it instead of a fake.
package gitserver

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"ebb.dev/ebb/internal/redact"
)

// Options configure a Server.
type Options struct {
	// Username and Password, when both are set, are required of every request (basic auth).
	Username, Password string
}

// Server is a smart-HTTP Git server over a directory of bare repositories. It can be taken
// down and brought back on the same address, to test what clients do while it is away.
type Server struct {
	// Root holds the bare repositories, one "<name>.git" directory each.
	Root string

	handler http.Handler
	addr    string

	mu       sync.Mutex
	opts     Options // the credentials may change: SetCredentials
	listener net.Listener
	srv      *http.Server

	// Requests counts the requests that reached the server, by kind: "info/refs" (ref
	// advertisement), "git-upload-pack" (fetch), "git-receive-pack" (push), "other".
	requests sync.Map // string -> *atomic.Int64
}

// New serves the bare repositories under root (created if missing) on a loopback port.
func New(root string, opts Options) (*Server, error) {
	git, err := exec.LookPath("git")
	if err != nil {
		return nil, fmt.Errorf("git server needs the git CLI: %w", err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	s := &Server{Root: root, opts: opts}
	backend := &cgi.Handler{
		Path: git,
		Args: []string{"http-backend"},
		Dir:  root,
		Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"},
		// http-backend complains on stderr about every missing repository a test asks for.
		Stderr: io.Discard,
	}
	s.handler = s.count(s.authenticate(backend))
	if err := s.Up(); err != nil {
		return nil, err
	}
	return s, nil
}

// Up starts serving, on the same address as before if the server was up once already.
func (s *Server) Up() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener != nil {
		return nil
	}
	addr := s.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("git server listen on %s: %w", addr, err)
	}
	s.addr = l.Addr().String()
	s.listener = l
	s.srv = &http.Server{Handler: s.handler}
	go func() { _ = s.srv.Serve(l) }()
	return nil
}

// Down stops serving: connections are refused until Up.
func (s *Server) Down() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener == nil {
		return nil
	}
	err := s.srv.Close()
	s.listener, s.srv = nil, nil
	return err
}

// Close stops the server for good.
func (s *Server) Close() error { return s.Down() }

// URL returns the clone URL of repository name, without credentials.
func (s *Server) URL(name string) string {
	return "http://" + s.addr + "/" + name + ".git"
}

// AuthURL returns the clone URL of repository name with the given credentials in it, for the
// git CLI. Never print it.
func (s *Server) AuthURL(name, username, password string) string {
	u, _ := url.Parse(s.URL(name))
	u.User = url.UserPassword(username, password)
	return u.String()
}

// CreateRepo creates an empty bare repository that accepts pushes, with default branch main,
// and returns its clone URL.
func (s *Server) CreateRepo(name string) (string, error) {
	dir := filepath.Join(s.Root, name+".git")
	if _, err := Git("", "init", "--bare", "--initial-branch=main", dir); err != nil {
		return "", err
	}
	if _, err := Git(dir, "config", "http.receivepack", "true"); err != nil {
		return "", err
	}
	return s.URL(name), nil
}

// RepoDir returns the directory of bare repository name, for file:// access.
func (s *Server) RepoDir(name string) string { return filepath.Join(s.Root, name+".git") }

// Requests returns how many requests of kind ("info/refs", "git-upload-pack",
// "git-receive-pack" or "other") reached the server.
func (s *Server) Requests(kind string) int64 {
	if v, ok := s.requests.Load(kind); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

func (s *Server) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := "other"
		switch {
		case strings.HasSuffix(r.URL.Path, "/info/refs"):
			kind = "info/refs"
		case strings.HasSuffix(r.URL.Path, "/git-upload-pack"):
			kind = "git-upload-pack"
		case strings.HasSuffix(r.URL.Path, "/git-receive-pack"):
			kind = "git-receive-pack"
		}
		v, _ := s.requests.LoadOrStore(kind, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
		next.ServeHTTP(w, r)
	})
}

// SetCredentials changes the credentials the server requires from the next request on, as a
// Git host does when a token is rotated. Empty ones let everyone in.
func (s *Server) SetCredentials(username, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.Username, s.opts.Password = username, password
}

func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		want := s.opts
		s.mu.Unlock()
		if want.Username == "" || want.Password == "" {
			next.ServeHTTP(w, r)
			return
		}
		user, pass, ok := r.BasicAuth()
		if !ok ||
			subtle.ConstantTimeCompare([]byte(user), []byte(want.Username)) != 1 ||
			subtle.ConstantTimeCompare([]byte(pass), []byte(want.Password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="ebb test git server"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Git runs the git CLI in dir with an isolated configuration (no user or system config) and a
// fixed identity, and returns its trimmed standard output.
func Git(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0",
		"GIT_AUTHOR_NAME=ebb test", "GIT_AUTHOR_EMAIL=test@ebb.dev",
		"GIT_COMMITTER_NAME=ebb test", "GIT_COMMITTER_EMAIL=test@ebb.dev",
	)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return "", fmt.Errorf("git %s: %w: %s", redactArgs(args), err, redact.Text(strings.TrimSpace(stderr.String())))
		}
		return "", fmt.Errorf("git %s: %w", redactArgs(args), err)
	}
	return strings.TrimSpace(string(out)), nil
}

// redactArgs hides credentials in URLs among git's arguments, as ebb itself does.
func redactArgs(args []string) string {
	return redact.Text(strings.Join(args, " "))
}
