package reconciler

import (
	"context"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	appslisters "k8s.io/client-go/listers/apps/v1"
	"k8s.io/client-go/tools/cache"
)

// deploymentWatch is one watch per cluster of the Deployments ebb manages (those labelled
// with a pipeline), shared by every rollout being verified there: no polling, and a rollout's
// progress is seen as soon as the API server reports it.
type deploymentWatch struct {
	lister appslisters.DeploymentLister
	synced cache.InformerSynced
	stop   chan struct{}

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every event
}

func (c *Cluster) watchDeployments() *deploymentWatch {
	c.watchOnce.Do(func() {
		factory := informers.NewSharedInformerFactoryWithOptions(c.Typed, 10*time.Minute,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = LabelPipeline }))
		inf := factory.Apps().V1().Deployments()
		w := &deploymentWatch{lister: inf.Lister(), synced: inf.Informer().HasSynced, stop: make(chan struct{}), changed: make(chan struct{})}
		notify := func(any) { w.notify() }
		_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: notify, DeleteFunc: notify, UpdateFunc: func(_, n any) { w.notify() },
		})
		factory.Start(w.stop)
		c.watch = w
	})
	return c.watch
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

// Close stops the cluster's watches.
func (c *Cluster) Close() {
	c.watchOnce.Do(func() {}) // no watch may start after Close
	if c.watch != nil {
		close(c.watch.stop)
	}
}

// WaitRollout waits until Deployment ns/name has rolled out: the controller observed its
// latest generation and every replica is updated, ready and available, with no old pods left.
// ProgressDeadlineExceeded, or timeout, fails it at once with a VerificationError.
//
// It reads the Deployment once from the API server, to learn the generation to wait for (the
// shared watch may lag behind an apply just made), then follows the watch.
func (c *Cluster) WaitRollout(ctx context.Context, ns, name string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	w := c.watchDeployments()
	if !cache.WaitForCacheSync(ctx.Done(), w.synced) {
		return ctx.Err()
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
			done, why, failed := rolloutState(d)
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
		d, err = w.lister.Deployments(ns).Get(name)
		if apierrors.IsNotFound(err) {
			d, last = nil, "the Deployment is gone"
		}
	}
}
