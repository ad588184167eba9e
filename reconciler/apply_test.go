package reconciler

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"

	"ebb.dev/ebb/internal/ratelimit"
)

func TestNewClusterRateLimits(t *testing.T) {
	cfg := &rest.Config{Host: "https://127.0.0.1:1", QPS: 42, Burst: 7}
	c, err := NewCluster("dev", cfg)
	require.NoError(t, err)
	defer c.Close()
	typed := c.Typed.(*kubernetes.Clientset)
	l, ok := typed.CoreV1().RESTClient().GetRateLimiter().(*ratelimit.Limiter)
	require.True(t, ok, "the typed client serves urgent requests first")
	assert.Equal(t, float32(42), l.QPS())
	assert.Same(t, l, typed.AppsV1().RESTClient().GetRateLimiter(), "one limit for the whole clientset, as client-go has")
	assert.Nil(t, cfg.RateLimiter, "the caller's config is left as it was")

	own := flowcontrol.NewTokenBucketRateLimiter(1, 1)
	c2, err := NewCluster("dev", &rest.Config{Host: "https://127.0.0.1:1", RateLimiter: own})
	require.NoError(t, err)
	defer c2.Close()
	assert.Same(t, own, c2.Typed.(*kubernetes.Clientset).CoreV1().RESTClient().GetRateLimiter(), "a limiter of the caller's is kept")
}
