package gitsource

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/internal/gitserver"
)

// Credentials used by the tests. Every test's logs are checked not to contain them.
const (
	testUser     = "ebb-bot"
	testPassword = "pa55-w0rd-never-printed"
)

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// fixture is a real Git server with one repository, a work tree pushing to it, and captured
// logs and metrics for the sources made from it.
type fixture struct {
	srv  *gitserver.Server
	name string
	work *gitserver.WorkTree
	logs *syncBuffer
	reg  *prometheus.Registry
	auth bool
}

// newFixture serves repository "pipelines" (behind basic auth when auth is set) holding one
// commit, pushed from a work tree.
func newFixture(t *testing.T, auth bool) *fixture {
	t.Helper()
	opts := gitserver.Options{}
	if auth {
		opts = gitserver.Options{Username: testUser, Password: testPassword}
	}
	srv, err := gitserver.New(filepath.Join(t.TempDir(), "repos"), opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	f := &fixture{srv: srv, name: "pipelines", logs: &syncBuffer{}, reg: prometheus.NewRegistry(), auth: auth}
	_, err = srv.CreateRepo(f.name)
	require.NoError(t, err)
	f.work, err = gitserver.Clone(f.pushURL(), filepath.Join(t.TempDir(), "work"))
	require.NoError(t, err)
	_, err = f.work.CommitAndPush("Add web pipeline", map[string]string{
		"pipelines/web.yaml": "kind: Pipeline\nmetadata:\n  name: web\n",
		"README.md":          "# demo\n",
	})
	require.NoError(t, err)
	t.Cleanup(func() { assertNoSecrets(t, f.logs.String()) })
	return f
}

func (f *fixture) pushURL() string {
	if f.auth {
		return f.srv.AuthURL(f.name, testUser, testPassword)
	}
	return f.srv.URL(f.name)
}

// options returns source options for the fixture's repository on main.
func (f *fixture) options(t *testing.T) Options {
	o := DefaultOptions()
	o.URL = f.srv.URL(f.name)
	o.Branch = "main"
	o.CacheDir = t.TempDir()
	o.Logger = slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	o.Registerer = f.reg
	o.MinBackoff, o.MaxBackoff = 10*time.Millisecond, 100*time.Millisecond
	if f.auth {
		o.Credentials = Credentials{Username: testUser, Password: testPassword}
	}
	return o
}

func (f *fixture) source(t *testing.T, mutate ...func(*Options)) *Source {
	t.Helper()
	o := f.options(t)
	for _, m := range mutate {
		m(&o)
	}
	s, err := New(o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// push commits files and pushes them, returning the commit.
func (f *fixture) push(t *testing.T, msg string, files map[string]string) string {
	t.Helper()
	sha, err := f.work.CommitAndPush(msg, files)
	require.NoError(t, err)
	return sha
}

func (f *fixture) head(t *testing.T) string {
	t.Helper()
	sha, err := f.work.Head()
	require.NoError(t, err)
	return sha
}

// assertNoSecrets fails when text contains any credential the tests use.
func assertNoSecrets(t *testing.T, text string, extra ...string) {
	t.Helper()
	for _, secret := range append([]string{testPassword, testToken}, extra...) {
		if secret != "" && strings.Contains(text, secret) {
			t.Errorf("a credential appears in the output:\n%s", text)
		}
	}
}

// testToken is a bearer token the tests configure; it must never be printed either.
const testToken = "tok-3xyz-never-printed"

// poll polls and requires success.
func poll(t *testing.T, s *Source) (*Snapshot, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	snap, changed, err := s.Poll(ctx)
	require.NoError(t, err)
	require.NotNil(t, snap)
	return snap, changed
}

// eventually waits, generously, for cond: the machine may be busy.
func eventually(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	require.Eventually(t, cond, 60*time.Second, 10*time.Millisecond, msg)
}

// newTestLogger logs everything, debug included, as text into buf.
func newTestLogger(buf *syncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func ioNopCloser(r io.Reader) io.ReadCloser { return io.NopCloser(r) }

// metricValue returns the value of the series name{labels} in reg (counter or gauge), or -1
// when there is no such series.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return -1
}
