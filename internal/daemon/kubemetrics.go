package daemon

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"
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
	return k
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
