package dashboard

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	toolscache "k8s.io/client-go/tools/cache"

	"ebb.dev/ebb/reconciler"
)

// feed keeps every execution of the namespace, as a watch (an informer, with the user's
// client) last reported it, and tells subscribers of each change. Pages are rendered from it,
// so a page costs no request to the API server, and its changes feed the pages' event streams.
type feed struct {
	mu     sync.RWMutex
	byName map[string]*reconciler.Execution
	// newest is byName sorted newest first; nil when it must be sorted again.
	newest []*reconciler.Execution
	subs   map[*subscription]struct{}
}

// change is one execution that was added, changed or deleted.
type change struct {
	name string
	// added is true when the feed did not hold the execution before.
	added bool
	// pipeline, instead of name, names a pipeline whose Pipeline object changed.
	pipeline string
}

// subscription receives the changes of the feed. When it cannot keep up its channel fills,
// and lost is set: the reader then refreshes everything instead.
type subscription struct {
	ch   chan change
	mu   sync.Mutex
	lost bool
}

func newFeed() *feed {
	return &feed{byName: map[string]*reconciler.Execution{}, subs: map[*subscription]struct{}{}}
}

// run watches the executions of namespace until ctx ends; it returns once the first list is
// in, or with the error that keeps it from listing (forbidden, unreachable).
func (f *feed) run(ctx context.Context, client dynamic.Interface, namespace string, resync time.Duration) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		if err != nil {
			cancel() // stop the informer, which would try again forever
		}
	}()
	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(client, resync, namespace, nil)
	inf := factory.ForResource(reconciler.ExecutionResource).Informer()
	listErr := make(chan error, 1)
	_ = inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *toolscache.Reflector, err error) {
		select {
		case listErr <- err:
		default:
		}
	})
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { f.put(obj) },
		UpdateFunc: func(_, obj any) { f.put(obj) },
		DeleteFunc: func(obj any) { f.remove(obj) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	synced := make(chan bool, 1)
	go func() { synced <- toolscache.WaitForCacheSync(ctx.Done(), inf.HasSynced) }()
	select {
	case ok := <-synced:
		if !ok {
			return ctx.Err()
		}
		return nil
	case err := <-listErr:
		return fmt.Errorf("watch executions in namespace %s: %w", namespace, err)
	}
}

// watchPipelines tells subscribers of each change of a Pipeline object (a new error, a new
// planned commit) until ctx ends. It returns an error, and watches nothing, when the user may
// not list them: their pages then update with their executions only.
func (f *feed) watchPipelines(ctx context.Context, client dynamic.Interface, namespace string) error {
	res := client.Resource(reconciler.PipelineResource).Namespace(namespace)
	if _, err := res.List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		return fmt.Errorf("list pipelines in namespace %s: %w", namespace, err)
	}
	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(client, 0, namespace, nil)
	inf := factory.ForResource(reconciler.PipelineResource).Informer()
	_ = inf.SetWatchErrorHandlerWithContext(func(context.Context, *toolscache.Reflector, error) {})
	changed := func(obj any) {
		if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if u, ok := obj.(*unstructured.Unstructured); ok {
			if name, _, _ := unstructured.NestedString(u.Object, "spec", "pipeline"); name != "" {
				f.publish(change{pipeline: name})
			}
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    changed,
		UpdateFunc: func(_, obj any) { changed(obj) },
		DeleteFunc: changed,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	return nil
}

func (f *feed) put(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	x := &reconciler.Execution{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, x); err != nil {
		return // not an execution ebb wrote; the page cannot show it
	}
	f.mu.Lock()
	_, had := f.byName[x.Name]
	f.byName[x.Name] = x
	f.newest = nil
	f.mu.Unlock()
	f.publish(change{name: x.Name, added: !had})
}

func (f *feed) remove(obj any) {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	f.mu.Lock()
	delete(f.byName, u.GetName())
	f.newest = nil
	f.mu.Unlock()
	f.publish(change{name: u.GetName()})
}

func (f *feed) publish(c change) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for s := range f.subs {
		select {
		case s.ch <- c:
		default:
			s.mu.Lock()
			s.lost = true
			s.mu.Unlock()
		}
	}
}

func (f *feed) subscribe() *subscription {
	s := &subscription{ch: make(chan change, 256)}
	f.mu.Lock()
	f.subs[s] = struct{}{}
	f.mu.Unlock()
	return s
}

func (f *feed) unsubscribe(s *subscription) {
	f.mu.Lock()
	delete(f.subs, s)
	f.mu.Unlock()
}

// takeLost reports whether changes were dropped since it was last asked.
func (s *subscription) takeLost() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	lost := s.lost
	s.lost = false
	return lost
}

// get returns the execution with object name name. The feed's objects are shared: callers
// must not change them.
func (f *feed) get(name string) (*reconciler.Execution, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	x, ok := f.byName[name]
	return x, ok
}

// list returns every execution, newest first. The slice and its objects are shared: callers
// must not change them.
func (f *feed) list() []*reconciler.Execution {
	f.mu.RLock()
	if f.newest != nil {
		defer f.mu.RUnlock()
		return f.newest
	}
	f.mu.RUnlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.newest == nil {
		all := make([]*reconciler.Execution, 0, len(f.byName))
		for _, x := range f.byName {
			all = append(all, x)
		}
		sort.Slice(all, func(i, j int) bool { return newer(all[i], all[j]) })
		f.newest = all
	}
	return f.newest
}

// newer orders executions newest first: by start (creation, for one not started), then by
// creation, then by number within a pipeline (two created in the same second), then by name.
func newer(a, b *reconciler.Execution) bool {
	if sa, sb := started(a), started(b); !sa.Equal(sb) {
		return sa.After(sb)
	}
	ta, tb := a.CreationTimestamp.Time, b.CreationTimestamp.Time
	if !ta.Equal(tb) {
		return ta.After(tb)
	}
	if a.Spec.Pipeline == b.Spec.Pipeline && a.Spec.Kind == b.Spec.Kind && a.Spec.Number != b.Spec.Number {
		return a.Spec.Number > b.Spec.Number
	}
	return a.Name > b.Name
}

func started(x *reconciler.Execution) time.Time {
	if x.Status.StartedAt != nil {
		return x.Status.StartedAt.Time
	}
	return x.CreationTimestamp.Time
}
