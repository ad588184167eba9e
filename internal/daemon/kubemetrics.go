package daemon

import (
	"net/http"

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
		Help: "Requests the daemon sent to Kubernetes API servers, by cluster and HTTP verb.",
	}, []string{"cluster", "verb"})}
	reg.MustRegister(k.total)
	return k
}

// instrument returns a copy of cfg whose requests are counted under cluster.
func (k *kubeRequests) instrument(cfg *rest.Config, cluster string) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(r *http.Request) (*http.Response, error) {
			k.total.WithLabelValues(cluster, r.Method).Inc()
			return rt.RoundTrip(r)
		})
	})
	return cfg
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
