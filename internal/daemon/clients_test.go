package daemon

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"

	"ebb.dev/ebb/gitsource"
	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/internal/gitserver"
	"ebb.dev/ebb/internal/ratelimit"
)

// The daemon's clients serve urgent requests first, each with a limit of its own of
// --kube-qps and --kube-burst (as client-go's buckets were), and their requests are counted.
func TestClientsRateLimits(t *testing.T) {
	repo, err := gitserver.Init(filepath.Join(t.TempDir(), "repo"))
	require.NoError(t, err)
	src := gitsource.DefaultOptions()
	src.URL, src.Branch, src.CacheDir = repo.Dir, "main", t.TempDir()
	home := rest.CopyConfig(cluster.Config)
	home.QPS, home.Burst = 0, 0 // as in a pod, or from a kubeconfig: the flags decide
	d, err := newDaemon(Options{
		Source: src, Config: &config.Config{Clusters: []config.Cluster{{Name: "dev", InCluster: true}}},
		Home: home, Namespace: "default", KubeQPS: 42, KubeBurst: 7,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.source.Close() })

	limiter := func(cs kubernetes.Interface) flowcontrol.RateLimiter {
		return cs.(*kubernetes.Clientset).CoreV1().RESTClient().GetRateLimiter()
	}
	events := limiter(d.events)
	require.IsType(t, &ratelimit.Limiter{}, events, "the home cluster's Events client")
	assert.Equal(t, float32(42), events.QPS())
	assert.Nil(t, d.opts.Home.RateLimiter, "clients built later from Home (the Leases') keep a bucket of their own")

	dev, err := d.clusters.get("dev")
	require.NoError(t, err)
	typed := limiter(dev.Typed)
	require.IsType(t, &ratelimit.Limiter{}, typed, "the cluster's client")
	assert.Equal(t, float32(42), typed.QPS())
	assert.NotSame(t, events, typed, "the cluster, although it is Home, has its own limit")

	counted := func() float64 {
		var m dto.Metric
		require.NoError(t, d.kube.total.WithLabelValues("dev", "GET", "namespaces").Write(&m))
		return m.GetCounter().GetValue()
	}
	observed := func(h *prometheus.HistogramVec) uint64 {
		var m dto.Metric
		require.NoError(t, h.WithLabelValues("urgent").(prometheus.Metric).Write(&m))
		return m.GetHistogram().GetSampleCount()
	}
	before, waits, answers := counted(), observed(kubeWait), observed(kubeLatency)
	_, err = dev.Typed.CoreV1().Namespaces().Get(ratelimit.Urgent(context.Background()), "default", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, before+1, counted(), "an urgent request is counted like the others")
	assert.Equal(t, waits+1, observed(kubeWait), "its wait for the rate limit, as urgent")
	assert.Equal(t, answers+1, observed(kubeLatency), "the API server's time to answer it, as urgent")
}
