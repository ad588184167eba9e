package ssa

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// LiveCache knows the resourceVersion of every live object ebb applied in one cluster (every
// object labelled with a pipeline), from metadata-only watches: one per resource, or one per
// resource and namespace where ebb may not list it cluster-wide. A drift check asks it
// whether an object changed since it was last found in sync, so a stage at rest costs no
// request. The watches start on first use of a resource and stop on Close.
type LiveCache struct {
	client metadata.Interface

	mu       sync.Mutex
	scopes   map[schema.GroupVersionResource]bool // resource -> watched per namespace
	watches  map[string]*liveWatch                // by resource and namespace ("" for all)
	stop     chan struct{}
	stopOnce sync.Once
}

type liveWatch struct {
	informer cache.SharedIndexInformer
	synced   chan struct{}
	// slow is set once a wait for the first list timed out: later checks do not wait again
	// (they compare through the API server) until the watch has synced.
	slow atomic.Bool
}

// syncTimeout bounds the wait for a new watch's first list; a drift check that cannot wait
// compares through the API server instead.
const syncTimeout = 10 * time.Second

// NewLiveCache returns a cache over the cluster cfg reaches.
func NewLiveCache(cfg *rest.Config) (*LiveCache, error) {
	client, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &LiveCache{client: client, scopes: map[schema.GroupVersionResource]bool{},
		watches: map[string]*liveWatch{}, stop: make(chan struct{})}, nil
}

// Close stops every watch.
func (c *LiveCache) Close() { c.stopOnce.Do(func() { close(c.stop) }) }

// version returns the live resourceVersion of the object in mapping's resource, and whether
// the watch knows the object. An error means the cache cannot tell.
func (c *LiveCache) version(ctx context.Context, mapping *meta.RESTMapping, id ObjMeta) (string, bool, error) {
	rv, _, ok, err := c.versionAndGeneration(ctx, mapping, id, true)
	return rv, ok, err
}

// versionAndGeneration is version, with the object's live generation. Unless wait, it does
// not wait for a watch it starts (or that is still listing) to sync: it says it cannot tell.
func (c *LiveCache) versionAndGeneration(ctx context.Context, mapping *meta.RESTMapping, id ObjMeta, wait bool) (string, int64, bool, error) {
	ns := ""
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ns = id.Namespace
	}
	w, err := c.watch(ctx, mapping.Resource, ns, wait)
	if err != nil {
		return "", 0, false, err
	}
	key := id.Name
	if ns != "" {
		key = ns + "/" + id.Name
	}
	obj, exists, err := w.informer.GetStore().GetByKey(key)
	if err != nil || !exists {
		return "", 0, false, err
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return "", 0, false, err
	}
	return m.GetResourceVersion(), m.GetGeneration(), true, nil
}

// watch returns the synced watch of gvr that covers namespace ns, starting it if needed.
func (c *LiveCache) watch(ctx context.Context, gvr schema.GroupVersionResource, ns string, wait bool) (*liveWatch, error) {
	perNamespace, decided, err := c.scope(ctx, gvr)
	if err != nil {
		return nil, err
	}
	if !decided || !perNamespace {
		ns = ""
	}
	key := gvr.String() + "|" + ns
	c.mu.Lock()
	w := c.watches[key]
	if w == nil {
		inf := metadatainformer.NewFilteredMetadataInformer(c.client, gvr, ns, 0, cache.Indexers{}, func(o *metav1.ListOptions) {
			o.LabelSelector = LabelPipeline
		}).Informer()
		_ = inf.SetTransform(func(obj any) (any, error) {
			if m, err := meta.Accessor(obj); err == nil {
				m.SetManagedFields(nil)
			}
			return obj, nil
		})
		w = &liveWatch{informer: inf, synced: make(chan struct{})}
		c.watches[key] = w
		go inf.Run(c.stop)
		go func() {
			if cache.WaitForCacheSync(c.stop, inf.HasSynced) {
				close(w.synced)
			}
		}()
	}
	c.mu.Unlock()
	if w.slow.Load() || !wait {
		select {
		case <-w.synced:
			return w, nil
		default:
			return nil, fmt.Errorf("watch of %s has not synced", gvr.Resource)
		}
	}
	select {
	case <-w.synced:
		return w, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(syncTimeout):
		w.slow.Store(true)
		return nil, fmt.Errorf("watch of %s has not synced within %s", gvr.Resource, syncTimeout)
	}
}

// scope decides, once per resource, whether it is watched cluster-wide or per namespace (ebb
// may not list it cluster-wide).
func (c *LiveCache) scope(ctx context.Context, gvr schema.GroupVersionResource) (perNamespace, decided bool, err error) {
	c.mu.Lock()
	perNamespace, decided = c.scopes[gvr]
	c.mu.Unlock()
	if decided {
		return perNamespace, true, nil
	}
	_, err = c.client.Resource(gvr).List(ctx, metav1.ListOptions{LabelSelector: LabelPipeline, Limit: 1})
	switch {
	case err == nil:
	case apierrors.IsForbidden(err):
		perNamespace = true
	default:
		return false, false, err
	}
	c.mu.Lock()
	c.scopes[gvr] = perNamespace
	c.mu.Unlock()
	return perNamespace, true, nil
}
