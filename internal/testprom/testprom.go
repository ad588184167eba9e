// Package testprom runs a real Prometheus server (Debian's `prometheus` package, installed by
// `make prometheus`) that scrapes exporters a test serves, so the metrics check is tested
// against the real query API rather than a stand-in. Like the test cluster, the server runs in
// its own process group with a parent-death signal, and Stop leaves nothing listening.
package testprom

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"ebb.dev/ebb/internal/proc"
)

// Options say what the server scrapes.
type Options struct {
	// Targets are the host:port addresses of exporters to scrape at /metrics, as job "test".
	Targets []string
	// ScrapeInterval is how often each target is scraped; default 1s.
	ScrapeInterval time.Duration
	// Binary is the prometheus executable; default: "prometheus" on PATH, else
	// /usr/bin/prometheus.
	Binary string
	// StartTimeout bounds the wait for /-/ready; default 30s.
	StartTimeout time.Duration
	// WebConfig is the server's --web.config.file (exporter-toolkit's format: basic_auth_users,
	// tls_server_config); empty serves without auth.
	WebConfig string
	// Username and Password are the basic auth the Server's own requests send (the readiness
	// wait, WaitForSamples), for a WebConfig with basic_auth_users.
	Username, Password string
}

// Server is a running Prometheus.
type Server struct {
	// URL is the server's base URL, e.g. http://127.0.0.1:41234.
	URL string
	// Dir holds the configuration, the TSDB and prometheus.log; Stop removes it.
	Dir string

	proc *proc.Process
	// username and password authenticate the server's own requests.
	username, password string
}

// errMissing is returned when the prometheus binary cannot be found.
var errMissing = errors.New("prometheus is missing; run `make prometheus`")

// debianBinary is where Debian's package puts the server, for a PATH without /usr/bin.
var debianBinary = "/usr/bin/prometheus"

// Binary returns the path of the prometheus executable.
func Binary() (string, error) {
	if path, err := exec.LookPath("prometheus"); err == nil {
		return path, nil
	}
	if _, err := os.Stat(debianBinary); err == nil {
		return debianBinary, nil
	}
	return "", errMissing
}

// Start runs Prometheus on a free loopback port and returns once it reports ready. On error,
// whatever was started is stopped.
func Start(ctx context.Context, opts Options) (_ *Server, err error) {
	if opts.ScrapeInterval <= 0 {
		opts.ScrapeInterval = time.Second
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 30 * time.Second
	}
	if opts.Binary == "" {
		if opts.Binary, err = Binary(); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "ebb-prometheus-")
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, username: opts.Username, password: opts.Password}
	defer func() {
		if err != nil {
			_ = s.Stop()
			err = fmt.Errorf("start prometheus: %w", err)
		}
	}()
	config := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(config, configYAML(opts), 0o600); err != nil {
		return nil, err
	}
	port, err := proc.FreePort()
	if err != nil {
		return nil, err
	}
	s.URL = "http://127.0.0.1:" + strconv.Itoa(port)
	args := []string{
		"--config.file=" + config,
		"--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=127.0.0.1:" + strconv.Itoa(port),
	}
	if opts.WebConfig != "" {
		web := filepath.Join(dir, "web.yml")
		if err := os.WriteFile(web, []byte(opts.WebConfig), 0o600); err != nil {
			return nil, err
		}
		args = append(args, "--web.config.file="+web)
	}
	if s.proc, err = proc.Start(dir, "prometheus", opts.Binary, args...); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	return s, s.waitReady(ctx)
}

// StartT starts a server for one test and stops it when the test ends; a server that fails to
// start fails the test.
func StartT(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("prometheus log:\n%s", s.LogTail(20))
		}
		if err := s.Stop(); err != nil {
			t.Errorf("stop prometheus: %v", err)
		}
	})
	return s
}

// configYAML is a configuration with one job, "test", scraping the targets. JSON is YAML, and
// quoting each target through encoding/json keeps the file valid whatever the addresses are.
func configYAML(opts Options) []byte {
	targets, _ := json.Marshal(append([]string{}, opts.Targets...))
	interval := opts.ScrapeInterval.String()
	return []byte(fmt.Sprintf(`global:
  scrape_interval: %s
  evaluation_interval: %s
scrape_configs:
- job_name: test
  static_configs:
  - targets: %s
`, interval, interval, targets))
}

// waitReady polls /-/ready until it answers 200, the process exits, or ctx ends.
func (s *Server) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/-/ready", nil)
		if err != nil {
			return err
		}
		s.authenticate(req)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.proc.Done():
			return s.proc.Exited()
		case <-ctx.Done():
			return fmt.Errorf("wait for %s/-/ready: %w; last lines of its log:\n%s", s.URL, ctx.Err(), s.LogTail(15))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitForSamples polls the instant query until it returns at least n samples: a test calls it
// so that its checks start once the exporter's series have been scraped.
func (s *Server) WaitForSamples(ctx context.Context, query string, n int) error {
	client := &http.Client{Timeout: 2 * time.Second}
	var last string
	for {
		got, err := s.count(ctx, client, query)
		if err == nil && got >= n {
			return nil
		}
		last = fmt.Sprintf("%d samples", got)
		if err != nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %d samples of %q: %w (last: %s)", n, query, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// count returns how many samples an instant query returns.
func (s *Server) count(ctx context.Context, client *http.Client, query string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/api/v1/query?"+url.Values{"query": {query}}.Encode(), nil)
	if err != nil {
		return 0, err
	}
	s.authenticate(req)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return 0, fmt.Errorf("read answer to %q: %w", query, err)
	}
	if body.Status != "success" {
		return 0, fmt.Errorf("query %q: %s", query, body.Error)
	}
	return len(body.Data.Result), nil
}

// authenticate adds the server's basic auth, if it has one, to req.
func (s *Server) authenticate(req *http.Request) {
	if s.username != "" {
		req.SetBasicAuth(s.username, s.password)
	}
}

// Stop kills the server's process group and removes its directory. It is safe to call more
// than once.
func (s *Server) Stop() error {
	if s.proc != nil {
		if err := s.proc.Stop(5 * time.Second); err != nil {
			return err
		}
		s.proc = nil
	}
	return os.RemoveAll(s.Dir)
}

// LogTail returns the last n lines of the server's log.
func (s *Server) LogTail(n int) string { return proc.Tail(filepath.Join(s.Dir, "prometheus.log"), n) }
