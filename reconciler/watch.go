package reconciler

import (
	"context"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	appslisters "k8s.io/client-go/listers/apps/v1"
	"k8s.io/client-go/tools/cache"
)

// deploymentWatch is a watch of the Deployments ebb manages (those labelled with a pipeline),
// shared by every rollout being verified: no polling, and a rollout's progress is seen as soon
// as the API server reports it. There is one per cluster when ebb may list Deployments in all
// namespaces, else one per namespace, so ebb also works with namespace-scoped RBAC. A watch
// lives only while rollouts use it (and watchIdle after), so an idle daemon holds none.
type deploymentWatch struct {
	lister appslisters.DeploymentLister
	synced cache.InformerSynced
	stop   chan struct{}
	users  int // rollouts waiting on it; guarded by Cluster.watchMu

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every event
}

// watchIdle is how long a watch no rollout uses is kept, for the next stage or release.
const watchIdle = 30 * time.Second

// watchScope returns the key of the watch that covers namespace ns: "" (every namespace) when
// ebb may list Deployments cluster-wide, else ns. The API server is asked until it answers.
func (c *Cluster) watchScope(ctx context.Context, ns string) string {
	c.watchMu.Lock()
	decided, perNamespace := c.scopeDecided, c.perNamespace
	c.watchMu.Unlock()
	if !decided {
		_, err := c.Typed.AppsV1().Deployments("").List(ctx, metav1.ListOptions{LabelSelector: LabelPipeline, Limit: 1})
		if err == nil || apierrors.IsForbidden(err) {
			perNamespace = err != nil
			c.watchMu.Lock()
			c.scopeDecided, c.perNamespace = true, perNamespace
			c.watchMu.Unlock()
		}
	}
	if perNamespace {
		return ns
	}
	return ""
}

// watchDeployments returns the watch covering namespace ns, starting it when there is none.
// The caller must release it when done.
func (c *Cluster) watchDeployments(ctx context.Context, ns string) (*deploymentWatch, string, error) {
	scope := c.watchScope(ctx, ns)
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	if c.watchStop == nil {
		return nil, "", fmt.Errorf("cluster %q is closed", c.Name)
	}
	if w := c.watches[scope]; w != nil {
		w.users++
		return w, scope, nil
	}
	factory := informers.NewSharedInformerFactoryWithOptions(c.Typed, 10*time.Minute, informers.WithNamespace(scope),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = LabelPipeline }),
		informers.WithTransform(verifiedFields))
	inf := factory.Apps().V1().Deployments()
	w := &deploymentWatch{lister: inf.Lister(), synced: inf.Informer().HasSynced,
		stop: make(chan struct{}), users: 1, changed: make(chan struct{})}
	notify := func(any) { w.notify() }
	_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: notify, DeleteFunc: notify, UpdateFunc: func(_, n any) { w.notify() },
	})
	factory.Start(w.stop)
	c.watches[scope] = w
	return w, scope, nil
}

// verifiedFields is the transform of the watches of Deployments, ReplicaSets and pods the
// gates read: it keeps what they read (a Deployment's generation, replicas, selector and
// status; a ReplicaSet's owner, labels and revision; a pod's labels and status) and drops the
// rest before it reaches the cache. A pod template is most of an object, and hundreds of
// rollouts at once hold hundreds of them.
func verifiedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	switch o := obj.(type) {
	case *appsv1.Deployment:
		o.Spec.Template = corev1.PodTemplateSpec{}
	case *appsv1.ReplicaSet:
		o.Spec.Template = corev1.PodTemplateSpec{}
	case *corev1.Pod:
		o.Spec, o.Annotations = corev1.PodSpec{}, nil
	}
	return obj, nil
}

// release ends one use of a watch; the last use stops it after watchIdle, unless a rollout
// takes it up again by then.
func (c *Cluster) release(scope string, w *deploymentWatch) {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	w.users--
	if w.users > 0 {
		return
	}
	time.AfterFunc(watchIdle, func() {
		c.watchMu.Lock()
		defer c.watchMu.Unlock()
		if w.users == 0 && c.watches[scope] == w {
			close(w.stop)
			delete(c.watches, scope)
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
	c.Live.Close()
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
// generation is the Deployment's generation as this release applied it (the shared watch may
// lag behind an apply just made); with 0 it is read once from the API server. Then it follows
// the watch.
func (c *Cluster) WaitRollout(ctx context.Context, ns, name string, generation int64, timeout time.Duration) error {
	started := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	w, scope, err := c.watchDeployments(ctx, ns)
	if err != nil {
		return err
	}
	defer c.release(scope, w)
	syncCtx, cancel := context.WithTimeout(ctx, timeout)
	synced := cache.WaitForCacheSync(syncCtx.Done(), w.synced)
	cancel()
	if !synced {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &WaitingError{Err: fmt.Errorf("watch Deployments in %s of cluster %q: no answer within %s (can ebb list and watch Deployments there?)", ns, c.Name, timeout)}
	}
	var d *appsv1.Deployment
	if generation == 0 {
		if d, err = c.Typed.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
			return err
		}
		generation = d.Generation
	} else if d, err = w.lister.Deployments(ns).Get(name); err != nil {
		d = nil // not seen by the watch yet
	}
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
			// The watch may be behind, or the API server gone: read the Deployment itself. A
			// cluster that does not answer is waited for; it does not fail the release.
			fresh, err := c.Typed.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
			switch {
			case err == nil:
				done, why, _ := rolloutState(fresh, started)
				if done {
					return nil
				}
				last = why
			case !apierrors.IsNotFound(err):
				return fmt.Errorf("read Deployment %s/%s in cluster %q at the end of its rollout timeout: %w", ns, name, c.Name, err)
			}
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
