package reconciler

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/client-go/rest"

	"ebb.dev/ebb/internal/ratelimit"
)

// sentRequest is one request a client sent, and whether its context was urgent.
type sentRequest struct {
	method, url, body string
	urgent            bool
}

// requestLog records every request of the clients built from its config.
type requestLog struct {
	mu   sync.Mutex
	sent []sentRequest
}

func (l *requestLog) config(cfg *rest.Config) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTrip(func(r *http.Request) (*http.Response, error) {
			s := sentRequest{method: r.Method, url: r.URL.String(), urgent: ratelimit.IsUrgent(r.Context())}
			if r.GetBody != nil {
				if b, err := r.GetBody(); err == nil {
					data, _ := io.ReadAll(b)
					s.body = string(data)
				}
			}
			l.mu.Lock()
			l.sent = append(l.sent, s)
			l.mu.Unlock()
			return rt.RoundTrip(r)
		})
	})
	return cfg
}

// matching returns the requests, in the order sent, for which keep is true.
func (l *requestLog) matching(keep func(sentRequest) bool) []sentRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []sentRequest
	for _, s := range l.sent {
		if keep(s) {
			out = append(out, s)
		}
	}
	return out
}

type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// A rollback's requests and a verification's go before the others in the clients' rate
// limits; a deploy's do not.
func TestRollbackAndVerificationAreUrgent(t *testing.T) {
	var log requestLog
	f := newFixtureOn(t, true, log.config(cluster.Config))
	f.deadline = 600 // the pods gate finds the failure, not the deadline

	f.sync(f.commit("c1", "release 1.0", "1.0"))
	f.waitFor("web#1", Completed)
	f.sync(f.commit("c2", "release broken", "broken-2.0"))
	f.waitFor("web#2", RollbackCompleted)
	f.waitFor("web_dev_rollback#1", Completed)
	f.settle()

	// The Deployment's applies: the two deploys' are not urgent, the rollback's is.
	applies := log.matching(func(s sentRequest) bool {
		return s.method == http.MethodPatch && strings.Contains(s.url, "/namespaces/"+f.ns+"/deployments/web?") && !strings.Contains(s.url, "dryRun")
	})
	var tags []string
	for _, s := range applies {
		tag := "1.0"
		if strings.Contains(s.body, "web:broken-2.0") {
			tag = "broken-2.0"
		}
		if s.urgent {
			tag += " (urgent)"
		}
		tags = append(tags, tag)
	}
	assert.Equal(t, []string{"1.0", "broken-2.0", "1.0 (urgent)"}, tags, "the Deployment's applies, in order")

	// The pods gate's watches (pods and ReplicaSets of the stage's namespace) are only the
	// verifications'.
	watches := log.matching(func(s sentRequest) bool {
		return s.method == http.MethodGet && (strings.Contains(s.url, "/namespaces/"+f.ns+"/pods") || strings.Contains(s.url, "/namespaces/"+f.ns+"/replicasets"))
	})
	require.NotEmpty(t, watches)
	for _, s := range watches {
		assert.True(t, s.urgent, "a verification's request is not urgent: %s %s", s.method, s.url)
	}

	// The records: the rollback execution's, and the parent's once it rolls back, are
	// urgent; the parent's creation, a deploy starting, is not.
	writes := func(display string) []sentRequest {
		return log.matching(func(s sentRequest) bool {
			return s.method != http.MethodGet && strings.Contains(s.url, "/namespaces/"+f.records+"/executions") &&
				strings.Contains(s.body, `"displayName":"`+display+`"`)
		})
	}
	rb := writes("web_dev_rollback#1")
	require.NotEmpty(t, rb)
	for _, s := range rb {
		assert.True(t, s.urgent, "a write of the rollback's record is not urgent: %s %s", s.method, s.url)
	}
	parent := writes("web#2")
	require.NotEmpty(t, parent)
	assert.False(t, parent[0].urgent, "the deploy's first write")
	rollingBack := 0
	for _, s := range parent {
		if strings.Contains(s.body, string(RollingBack)) {
			rollingBack++
			assert.True(t, s.urgent, "a write of the parent rolling back is not urgent: %s %s", s.method, s.url)
		}
	}
	assert.NotZero(t, rollingBack)
}
