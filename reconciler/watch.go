package reconciler

import (
	"context"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	appslisters "k8s.io/client-go/listers/apps/v1"
	"k8s.io/client-go/tools/cache"
)

// deploymentWatch is one watch per namespace of the Deployments ebb manages there (those
// labelled with a pipeline), shared by every rollout being verified in it: no polling, and a
// rollout's progress is seen as soon as the API server reports it. Watching per namespace
// needs no cluster-wide rights, so ebb works with namespace-scoped RBAC. A watch lives only
// while rollouts use it (and watchIdle after), so an idle daemon holds no watches at all.
type deploymentWatch struct {
	lister appslisters.DeploymentNamespaceLister
	synced cache.InformerSynced
	stop   chan struct{}
	users  int // rollouts waiting on it; guarded by Cluster.watchMu

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every event
}

// watchIdle is how long a watch no rollout uses is kept, for the next stage or release.
const watchIdle = 30 * time.Second

// watchDeployments returns the watch of namespace ns, starting it when there is none. The
// caller must call release when done with it.
func (c *Cluster) watchDeployments(ns string) (*deploymentWatch, error) {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	if c.watchStop == nil {
		return nil, fmt.Errorf("cluster %q is closed", c.Name)
	}
	if w := c.watches[ns]; w != nil {
		w.users++
		return w, nil
	}
	factory := informers.NewSharedInformerFactoryWithOptions(c.Typed, 10*time.Minute, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = LabelPipeline }))
	inf := factory.Apps().V1().Deployments()
	w := &deploymentWatch{lister: inf.Lister().Deployments(ns), synced: inf.Informer().HasSynced,
		stop: make(chan struct{}), users: 1, changed: make(chan struct{})}
	notify := func(any) { w.notify() }
	_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: notify, DeleteFunc: notify, UpdateFunc: func(_, n any) { w.notify() },
	})
	factory.Start(w.stop)
	c.watches[ns] = w
	return w, nil
}

// release ends one use of the watch of ns; the last use stops it after watchIdle, unless a
// rollout takes it up again by then.
func (c *Cluster) release(ns string, w *deploymentWatch) {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	w.users--
	if w.users > 0 {
		return
	}
	time.AfterFunc(watchIdle, func() {
		c.watchMu.Lock()
		defer c.watchMu.Unlock()
		if w.users == 0 && c.watches[ns] == w {
			close(w.stop)
			delete(c.watches, ns)
		}
	})
}

func (w *deploymentWatch) notify() {
	w.mu.Lock()
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
}

// next returns a channel closed at the next event.
func (w *deploymentWatch) next() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

// Close stops the cluster's watches; no watch starts after it.
func (c *Cluster) Close() {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	if c.watchStop == nil {
		return
	}
	close(c.watchStop)
	c.watchStop = nil
	for ns, w := range c.watches {
		close(w.stop)
		delete(c.watches, ns)
	}
}

// WaitRollout waits until Deployment ns/name has rolled out: the controller observed its
// latest generation and every replica is updated, ready and available, with no old pods left.
// ProgressDeadlineExceeded, or timeout, fails it at once with a VerificationError.
//
// It reads the Deployment once from the API server, to learn the generation to wait for (the
// shared watch may lag behind an apply just made), then follows the watch.
func (c *Cluster) WaitRollout(ctx context.Context, ns, name string, timeout time.Duration) error {
	started := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	w, err := c.watchDeployments(ns)
	if err != nil {
		return err
	}
	defer c.release(ns, w)
	syncCtx, cancel := context.WithTimeout(ctx, timeout)
	synced := cache.WaitForCacheSync(syncCtx.Done(), w.synced)
	cancel()
	if !synced {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("watch Deployments in %s of cluster %q: no answer within %s (can ebb list and watch Deployments there?)", ns, c.Name, timeout)
	}
	d, err := c.Typed.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	generation := d.Generation
	last := "waiting for the Deployment"
	for {
		changed := w.next()
		if d != nil && d.Generation >= generation {
			done, why, failed := rolloutState(d, started)
			if failed {
				return verificationFailed("rollout", "Deployment %s/%s: %s", ns, name, why)
			}
			if done {
				return nil
			}
			last = why
		}
		select {
		case <-changed:
		case <-time.After(5 * time.Second): // a safety net, should an event be missed
		case <-deadline.C:
			return verificationFailed("rollout", "Deployment %s/%s did not roll out within %s: %s", ns, name, timeout, last)
		case <-ctx.Done():
			return ctx.Err()
		}
		d, err = w.lister.Get(name)
		if apierrors.IsNotFound(err) {
			d, last = nil, "the Deployment is gone"
		}
	}
}
