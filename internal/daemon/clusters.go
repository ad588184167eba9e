package daemon

import (
	"context"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/reconciler"
)

// clusters resolves the daemon config's cluster names to clients, lazily: a cluster whose
// kubeconfig Secret cannot be read yet fails the stages that use it, with the reason, and is
// tried again on the next execution. Nothing else is affected.
type clusters struct {
	cfg    *config.Config
	home   *rest.Config
	homeCS kubernetes.Interface
	kube   *kubeRequests
	// qps and burst limit each cluster's client (Options.KubeQPS, KubeBurst).
	qps   float32
	burst int

	mu       sync.Mutex
	resolved map[string]*reconciler.Cluster
}

func newClusters(cfg *config.Config, home *rest.Config, homeCS kubernetes.Interface, kube *kubeRequests) *clusters {
	return &clusters{cfg: cfg, home: home, homeCS: homeCS, kube: kube, resolved: map[string]*reconciler.Cluster{}}
}

// get returns the clients of cluster name.
func (c *clusters) get(name string) (*reconciler.Cluster, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl := c.resolved[name]; cl != nil {
		return cl, nil
	}
	entry := c.cfg.Cluster(name)
	if entry == nil {
		return nil, &reconciler.UnknownClusterError{Name: name}
	}
	restCfg, err := c.restConfig(entry)
	if err != nil {
		return nil, err
	}
	if c.qps > 0 {
		restCfg.QPS, restCfg.Burst = c.qps, c.burst
	}
	cl, err := reconciler.NewCluster(name, c.kube.instrument(restCfg, name))
	if err != nil {
		return nil, err
	}
	c.resolved[name] = cl
	return cl, nil
}

// restConfig reaches a cluster. "inCluster" means the cluster ebb runs in, which is Home:
// the same whether ebb runs in a pod or, for tests and the demo, outside with a kubeconfig.
func (c *clusters) restConfig(e *config.Cluster) (*rest.Config, error) {
	if e.InCluster {
		return rest.CopyConfig(c.home), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return e.RESTConfig(ctx, c.homeCS)
}
