package ssa

import (
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// FieldManager is the server-side apply field manager of everything ebb writes.
const FieldManager = "ebb"

// Labels ebb sets on every object it applies, naming the pipeline and stage that own it.
const (
	LabelPipeline = "ebb.dev/pipeline"
	LabelStage    = "ebb.dev/stage"
)

// AnnotationPrune set to PruneDisabled on a live object keeps ebb from ever deleting it, also
// when it leaves the release (Flux's kustomize.toolkit.fluxcd.io/prune: disabled).
const (
	AnnotationPrune = "ebb.dev/prune"
	PruneDisabled   = "disabled"
)

// Options configure a Manager.
type Options struct {
	// FieldManager is the server-side apply field manager; default FieldManager.
	FieldManager string
}

// DefaultOptions returns the options the daemon and the CLI use.
func DefaultOptions() Options { return Options{FieldManager: FieldManager} }

// Manager applies, diffs and prunes objects in one cluster.
type Manager struct {
	cluster string
	opts    Options
	client  dynamic.Interface
	mapper  meta.ResettableRESTMapper
	// namespaces holds the names of the Namespaces this Manager created or found existing
	// (see markCreated).
	namespaces sync.Map
}

// New returns a Manager for the cluster cfg reaches, named cluster in its errors. It does not
// contact the cluster yet.
func New(cluster string, cfg *rest.Config, opts Options) (*Manager, error) {
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", cluster, err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", cluster, err)
	}
	return NewWith(cluster, client, restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), opts), nil
}

// NewWith returns a Manager over existing clients.
func NewWith(cluster string, client dynamic.Interface, mapper meta.ResettableRESTMapper, opts Options) *Manager {
	if opts.FieldManager == "" {
		opts.FieldManager = FieldManager
	}
	return &Manager{cluster: cluster, opts: opts, client: client, mapper: mapper}
}

// Client returns the dynamic client of the Manager's cluster.
func (m *Manager) Client() dynamic.Interface { return m.client }

// Mapping returns the REST mapping of a kind, refreshing discovery once for kinds that
// appeared since it was cached (a CRD applied earlier in the same release).
func (m *Manager) Mapping(gvk schema.GroupVersionKind) (*meta.RESTMapping, error) {
	mapping, err := m.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		m.mapper.Reset()
		mapping, err = m.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	return mapping, err
}

// resource returns the client of the resource of o, namespaced if it is.
func (m *Manager) resource(o ObjMeta) (dynamic.ResourceInterface, error) {
	mapping, err := m.Mapping(o.GroupVersionKind())
	if err != nil {
		return nil, fmt.Errorf("find the resource of %s in cluster %q: %w", o, m.cluster, err)
	}
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		return m.client.Resource(mapping.Resource).Namespace(o.Namespace), nil
	}
	return m.client.Resource(mapping.Resource), nil
}

// Owner names the pipeline and stage that own what a Manager applies.
type Owner struct {
	Pipeline, Stage string
}

// Labels returns the owner labels.
func (o Owner) Labels() map[string]string {
	return map[string]string{LabelPipeline: LabelValue(o.Pipeline), LabelStage: LabelValue(o.Stage)}
}

// owns reports whether obj carries the owner's labels.
func (o Owner) owns(obj *unstructured.Unstructured) bool {
	l := obj.GetLabels()
	return l[LabelPipeline] == LabelValue(o.Pipeline) && l[LabelStage] == LabelValue(o.Stage)
}

// withLabels returns obj carrying the owner's labels, copied when it did not.
func (o Owner) withLabels(obj *unstructured.Unstructured) *unstructured.Unstructured {
	if o.Pipeline == "" || o.owns(obj) {
		return obj
	}
	obj = obj.DeepCopy()
	l := obj.GetLabels()
	if l == nil {
		l = map[string]string{}
	}
	for k, v := range o.Labels() {
		l[k] = v
	}
	obj.SetLabels(l)
	return obj
}

// LabelValue makes s fit a label value (63 characters of [A-Za-z0-9._-]).
func LabelValue(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 63 {
		b = b[:63]
	}
	start, end := 0, len(b)
	for start < end && (b[start] == '.' || b[start] == '_' || b[start] == '-') {
		start++
	}
	for end > start && (b[end-1] == '.' || b[end-1] == '_' || b[end-1] == '-') {
		end--
	}
	return string(b[start:end])
}
