// Package notify tells webhook receivers (a JSON endpoint, a Slack incoming webhook) of the
// statuses executions take: ROLLING_BACK, ROLLBACK_COMPLETED, FAILED, WAITING and the others a
// receiver asks for.
//
// It follows the Execution records, not the reconciler: a watch (an informer) on the records
// namespace reads each execution's status.history, in which every status change has a
// sequence number, and delivers to each receiver the entries it asks for, in order. What a
// receiver was sent is recorded on the execution itself, as the annotation
// notify.ebb.dev/<receiver>: <last seq delivered>, written with a merge patch of metadata
// only (the reconciler writes the status subresource, which leaves metadata alone, and takes
// the newest resourceVersion on a conflict). So a daemon killed at any point loses no
// notification, and sends again at most the one that was in flight: delivery is at least
// once, in order per execution. Receivers are told apart by X-Ebb-Delivery
// (<execution>/<seq>), which stays the same when a message is sent again.
//
// Each receiver has its own queue of execution names (each name at most once, so the queue is
// bounded by the number of executions) and its own worker, with a back-off per execution that
// doubles from a second: a receiver that is down or slow delays only its own messages, never
// an execution or another receiver. URLs and signing keys never reach logs, Events, records or
// errors: a receiver is named by its name only.
package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/prometheus/client_golang/prometheus"

	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/reconciler"
)

// AnnotationPrefix prefixes the annotation that records, on an execution, the sequence number
// of the last history entry delivered to a receiver: notify.ebb.dev/<receiver>.
const AnnotationPrefix = "notify.ebb.dev/"

// SinceConfigMap is the ConfigMap, in the records namespace, that remembers when each
// receiver was first configured: history older than that is not sent to it, so a new receiver
// is not flooded with the past.
const SinceConfigMap = "ebb-notifications"

// Options configure a Notifier.
type Options struct {
	// Namespace holds the Execution records, in the cluster of Records.
	Namespace string
	// Records and Home are clients of the cluster ebb runs in: the records, and the Secrets
	// and ConfigMap.
	Records dynamic.Interface
	Home    kubernetes.Interface
	// Receivers are the notifications of the daemon config.
	Receivers []config.Notification
	// OnExecution, when set, hears of every execution the watch sees added or changed (the
	// write-back follows rollbacks this way). It must not block.
	OnExecution func(*reconciler.Execution)
	// Owns, when set, says which pipelines' executions to follow (the daemon's shards);
	// default every pipeline's.
	Owns func(pipeline string) bool
	// HTTPClient posts the messages; default a client with a 10s timeout.
	HTTPClient *http.Client
	// MinBackoff is the first wait before a failed delivery is tried again; default 1s.
	MinBackoff time.Duration
	// Logger receives the logs; default slog.Default().
	Logger *slog.Logger
	// Registerer receives ebb_notifications_total; nil registers nothing.
	Registerer prometheus.Registerer
}

// Notifier follows executions and notifies the receivers.
type Notifier struct {
	opts      Options
	log       *slog.Logger
	informer  cache.SharedIndexInformer
	receivers []*receiver
	sent      *prometheus.CounterVec
}

// New returns a Notifier; Run starts it.
func New(opts Options) (*Notifier, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = time.Second
	}
	n := &Notifier{opts: opts, log: opts.Logger.With("component", "notify")}
	n.sent = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ebb_notifications_total",
		Help: "Notifications posted to receivers, by receiver and result (delivered, failed).",
	}, []string{"receiver", "result"})
	if opts.Registerer != nil {
		// A daemon that leads again registers again: it keeps counting on the first counter.
		var already prometheus.AlreadyRegisteredError
		if err := opts.Registerer.Register(n.sent); errors.As(err, &already) {
			n.sent = already.ExistingCollector.(*prometheus.CounterVec)
		} else if err != nil {
			return nil, fmt.Errorf("register notification metrics: %w", err)
		}
	}
	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(opts.Records, 0, opts.Namespace, nil)
	n.informer = factory.ForResource(reconciler.ExecutionResource).Informer()
	// The watch holds every execution: without their managed fields and their stages'
	// records (tasks and their messages), which nothing here reads, and which are most of a
	// record (6 MB of the daemon's heap at 500 pipelines). A notification says what the
	// history says; the write-back reads the execution it writes back to from the API server.
	_ = n.informer.SetTransform(func(obj any) (any, error) {
		if u, ok := obj.(*unstructured.Unstructured); ok {
			u.SetManagedFields(nil)
			unstructured.RemoveNestedField(u.Object, "status", "stages")
		}
		return obj, nil
	})
	for _, c := range opts.Receivers {
		n.receivers = append(n.receivers, newReceiver(n, c))
	}
	return n, nil
}

// Run follows the executions until ctx ends.
func (n *Notifier) Run(ctx context.Context) error {
	for wait := n.opts.MinBackoff; len(n.receivers) > 0; wait = min(2*wait, time.Minute) {
		err := n.since(ctx)
		if err == nil {
			break
		}
		n.log.Error("read when the receivers were configured; trying again", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
	enqueue := func(obj any) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return
		}
		if pipeline, _, _ := unstructured.NestedString(u.Object, "spec", "pipeline"); n.opts.Owns != nil && !n.opts.Owns(pipeline) {
			return // another replica's
		}
		for _, r := range n.receivers {
			r.queue.Add(u.GetName())
		}
		if n.opts.OnExecution != nil {
			if x, err := executionFrom(u); err == nil {
				n.opts.OnExecution(x)
			}
		}
	}
	if _, err := n.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if u, ok := obj.(*unstructured.Unstructured); ok {
				for _, r := range n.receivers {
					r.forget(u.GetName())
				}
			}
		},
	}); err != nil {
		return fmt.Errorf("watch executions: %w", err)
	}
	go n.informer.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), n.informer.HasSynced) {
		return ctx.Err()
	}
	n.log.Info("following executions", "receivers", len(n.receivers))
	for _, r := range n.receivers {
		go r.run(ctx)
	}
	<-ctx.Done()
	for _, r := range n.receivers {
		r.queue.ShutDown()
	}
	return nil
}

// Execution returns the execution with object name name as the watch last saw it.
func (n *Notifier) Execution(name string) (*reconciler.Execution, bool) {
	obj, ok, err := n.informer.GetIndexer().GetByKey(n.opts.Namespace + "/" + name)
	if err != nil || !ok {
		return nil, false
	}
	x, err := executionFrom(obj.(*unstructured.Unstructured))
	return x, err == nil
}

// since reads, and records for new receivers, when each receiver was first configured.
func (n *Notifier) since(ctx context.Context) error {
	cms := n.opts.Home.CoreV1().ConfigMaps(n.opts.Namespace)
	now := time.Now().UTC().Truncate(time.Second).Format(time.RFC3339)
	for attempt := 0; ; attempt++ {
		cm, err := cms.Get(ctx, SinceConfigMap, metav1.GetOptions{})
		create := apierrors.IsNotFound(err)
		if err != nil && !create {
			return fmt.Errorf("read ConfigMap %s/%s: %w", n.opts.Namespace, SinceConfigMap, err)
		}
		if create {
			cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: SinceConfigMap, Namespace: n.opts.Namespace}}
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		changed := false
		for _, r := range n.receivers {
			if _, ok := cm.Data[r.name]; !ok {
				cm.Data[r.name], changed = now, true
			}
			t, err := time.Parse(time.RFC3339, cm.Data[r.name])
			if err != nil {
				return fmt.Errorf("ConfigMap %s/%s, key %q: not a time (RFC 3339): %q", n.opts.Namespace, SinceConfigMap, r.name, cm.Data[r.name])
			}
			r.since = t
		}
		switch {
		case !changed:
			return nil
		case create:
			_, err = cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: fieldManager})
		default:
			_, err = cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: fieldManager})
		}
		if err == nil {
			return nil
		}
		if (!apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err)) || attempt == 3 {
			return fmt.Errorf("record the receivers in ConfigMap %s/%s: %w", n.opts.Namespace, SinceConfigMap, err)
		}
	}
}

// fieldManager names ebb's notifier in managedFields.
const fieldManager = "ebb-notify"

func executionFrom(u *unstructured.Unstructured) (*reconciler.Execution, error) {
	x := &reconciler.Execution{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, x); err != nil {
		return nil, fmt.Errorf("read execution %s: %w", u.GetName(), err)
	}
	return x, nil
}
