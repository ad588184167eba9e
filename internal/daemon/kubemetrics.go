package daemon

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/metrics"

	"ebb.dev/ebb/internal/ratelimit"
)

// kubeRequests counts the daemon's requests to each cluster by verb, so that an idle daemon
// can be seen to write nothing (ebb_kube_requests_total{verb=~"POST|PUT|PATCH|DELETE"}).
type kubeRequests struct {
	total *prometheus.CounterVec
}

func newKubeRequests(reg prometheus.Registerer) *kubeRequests {
	k := &kubeRequests{total: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ebb_kube_requests_total",
		Help: "Requests the daemon sent to Kubernetes API servers, by cluster, HTTP verb and resource.",
	}, []string{"cluster", "verb", "resource"})}
	reg.MustRegister(k.total)
	registerClientLatency(reg)
	return k
}

// How long requests wait for their client's rate limit, and how long the API server takes to
// answer them, by priority (ratelimit.Urgent): whether a rollback's time goes in the client's
// queue or in the server. client-go reports both through hooks of the process
// (k8s.io/client-go/tools/metrics, set once), so the histograms are the process's too, and
// every daemon's registry shows them.
var (
	kubeWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ebb_kube_rate_limit_wait_seconds",
		Help:    "Time requests waited for their client's rate limit, by priority (urgent: rollbacks and verifications).",
		Buckets: latencyBuckets,
	}, []string{"priority"})
	kubeLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ebb_kube_request_duration_seconds",
		Help:    "Time Kubernetes API servers took to answer the daemon's requests (to the response's headers), by priority.",
		Buckets: latencyBuckets,
	}, []string{"priority"})
	latencyBuckets    = []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	hookClientLatency sync.Once
)

func registerClientLatency(reg prometheus.Registerer) {
	hookClientLatency.Do(func() {
		metrics.Register(metrics.RegisterOpts{RateLimiterLatency: byPriority{kubeWait}, RequestLatency: byPriority{kubeLatency}})
	})
	reg.MustRegister(kubeWait, kubeLatency)
}

// byPriority observes a client-go latency under the priority of the request's context.
type byPriority struct{ h *prometheus.HistogramVec }

func (b byPriority) Observe(ctx context.Context, _ string, _ url.URL, d time.Duration) {
	p := "normal"
	if ratelimit.IsUrgent(ctx) {
		p = "urgent"
	}
	b.h.WithLabelValues(p).Observe(d.Seconds())
}

// instrument returns a copy of cfg whose requests are counted under cluster.
func (k *kubeRequests) instrument(cfg *rest.Config, cluster string) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(r *http.Request) (*http.Response, error) {
			k.total.WithLabelValues(cluster, r.Method, resourceOf(r.URL.Path)).Inc()
			return rt.RoundTrip(r)
		})
	})
	return cfg
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// resourceOf returns the resource a Kubernetes API path names ("deployments", "leases"), or
// "other" for discovery and health paths.
func resourceOf(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		parts = parts[2:] // api/v1/...
	case len(parts) >= 4 && parts[0] == "apis":
		parts = parts[3:] // apis/group/version/...
	default:
		return "other"
	}
	if len(parts) >= 3 && parts[0] == "namespaces" {
		return parts[2]
	}
	return parts[0]
}
