package reconciler

import (
	"context"
	"fmt"
	"sort"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// FieldManager is the server-side apply field manager of everything ebb writes.
const FieldManager = "ebb"

// Cluster is one cluster a stage deploys to, with the clients ebb uses on it.
type Cluster struct {
	// Name is the cluster's name in the daemon config.
	Name    string
	Typed   kubernetes.Interface
	Dynamic dynamic.Interface
	mapper  *restmapper.DeferredDiscoveryRESTMapper

	watchMu      sync.Mutex
	scopeDecided bool
	perNamespace bool                        // ebb may not list Deployments cluster-wide: watch per namespace
	watches      map[string]*deploymentWatch // by namespace, or "" for all
	watchStop    chan struct{}               // nil once closed
}

// NewCluster connects to a cluster. It does not contact the cluster yet: an unreachable
// cluster fails the stage that uses it, and nothing else.
func NewCluster(name string, cfg *rest.Config) (*Cluster, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 {
		// Hundreds of pipelines share one client per cluster.
		cfg.QPS, cfg.Burst = 100, 200
	}
	typed, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", name, err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", name, err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", name, err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	return &Cluster{Name: name, Typed: typed, Dynamic: dyn, mapper: mapper,
		watches: map[string]*deploymentWatch{}, watchStop: make(chan struct{})}, nil
}

// resource finds the API resource of obj's kind, refreshing discovery once for kinds that
// appeared since (a CRD applied earlier in the same release).
func (t *Cluster) resource(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	mapping, err := t.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		t.mapper.Reset()
		mapping, err = t.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("find resource of %s in cluster %q: %w", describe(obj), t.Name, err)
	}
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		return t.Dynamic.Resource(mapping.Resource).Namespace(obj.GetNamespace()), nil
	}
	return t.Dynamic.Resource(mapping.Resource), nil
}

// Apply server-side applies objs in order, as field manager ebb, taking ownership of
// conflicting fields: Git is the source of truth. It labels each object with its pipeline and
// stage, so Prune can find it later.
func (t *Cluster) Apply(ctx context.Context, pipeline, stage string, objs []*unstructured.Unstructured) error {
	for _, obj := range objs {
		obj = withOwnerLabels(obj, pipeline, stage)
		ri, err := t.resource(obj)
		if err != nil {
			return err
		}
		if _, err := ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
			return fmt.Errorf("apply %s to cluster %q: %w", describe(obj), t.Name, err)
		}
	}
	return nil
}

// EnsureNamespace creates namespace ns unless it exists. It is left unlabelled, so it is
// never pruned: deleting a namespace deletes everything in it.
func (t *Cluster) EnsureNamespace(ctx context.Context, ns string) error {
	if ns == "" {
		return nil
	}
	_, err := t.Typed.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = t.Typed.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{FieldManager: FieldManager})
		if apierrors.IsAlreadyExists(err) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("ensure namespace %s in cluster %q: %w", ns, t.Name, err)
	}
	return nil
}

// Prune deletes the objects of kinds that carry the stage's labels but are not in keep, and
// returns what it deleted. Namespaced kinds are looked for in namespaces only (and in keep's
// namespaces), so namespace-scoped rights suffice. Namespaces are never pruned: deleting one
// takes everything in it.
func (t *Cluster) Prune(ctx context.Context, pipeline, stage string, namespaces []string, keep []*unstructured.Unstructured, kinds []schema.GroupVersionKind) ([]string, error) {
	kept := map[string]bool{}
	nsSet := map[string]bool{}
	for _, ns := range namespaces {
		nsSet[ns] = true
	}
	for _, o := range keep {
		kept[identity(o)] = true
		if o.GetNamespace() != "" {
			nsSet[o.GetNamespace()] = true
		}
	}
	selector := labels.Set{LabelPipeline: labelValue(pipeline), LabelStage: labelValue(stage)}.String()
	var deleted []string
	for _, gvk := range uniqueKinds(kinds) {
		if gvk.Kind == "Namespace" && gvk.Group == "" {
			continue
		}
		mapping, err := t.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			continue // the kind is gone from the cluster, and with it its objects
		}
		lists := []dynamic.ResourceInterface{t.Dynamic.Resource(mapping.Resource)}
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			lists = lists[:0]
			for _, ns := range sortedKeys(nsSet) {
				lists = append(lists, t.Dynamic.Resource(mapping.Resource).Namespace(ns))
			}
		}
		for _, ri := range lists {
			list, err := ri.List(ctx, metav1.ListOptions{LabelSelector: selector})
			if err != nil {
				return deleted, fmt.Errorf("list %s in cluster %q: %w", gvk.Kind, t.Name, err)
			}
			for i := range list.Items {
				obj := &list.Items[i]
				obj.SetGroupVersionKind(gvk)
				if kept[identity(obj)] {
					continue
				}
				policy := metav1.DeletePropagationBackground
				err = ri.Delete(ctx, obj.GetName(), metav1.DeleteOptions{PropagationPolicy: &policy})
				if err != nil && !apierrors.IsNotFound(err) {
					return deleted, fmt.Errorf("prune %s from cluster %q: %w", describe(obj), t.Name, err)
				}
				deleted = append(deleted, describe(obj))
			}
		}
	}
	return deleted, nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// pruneKinds are looked through for objects a stage no longer has, besides the kinds of the
// releases involved.
var pruneKinds = []schema.GroupVersionKind{
	{Version: "v1", Kind: "ConfigMap"}, {Version: "v1", Kind: "Secret"}, {Version: "v1", Kind: "Service"},
	{Version: "v1", Kind: "ServiceAccount"}, {Group: "apps", Version: "v1", Kind: "Deployment"},
}

// kindsOf lists the kinds of objs.
func kindsOf(objs ...[]*unstructured.Unstructured) []schema.GroupVersionKind {
	var out []schema.GroupVersionKind
	for _, list := range objs {
		for _, o := range list {
			out = append(out, o.GroupVersionKind())
		}
	}
	return out
}

func uniqueKinds(kinds []schema.GroupVersionKind) []schema.GroupVersionKind {
	seen := map[schema.GroupKind]bool{}
	var out []schema.GroupVersionKind
	for _, k := range kinds {
		if !seen[k.GroupKind()] {
			seen[k.GroupKind()] = true
			out = append(out, k)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

func withOwnerLabels(obj *unstructured.Unstructured, pipeline, stage string) *unstructured.Unstructured {
	l := obj.GetLabels()
	if l[LabelPipeline] == labelValue(pipeline) && l[LabelStage] == labelValue(stage) {
		return obj
	}
	obj = obj.DeepCopy()
	if l == nil {
		l = map[string]string{}
	}
	l[LabelPipeline], l[LabelStage] = labelValue(pipeline), labelValue(stage)
	obj.SetLabels(l)
	return obj
}

func identity(o *unstructured.Unstructured) string {
	return o.GroupVersionKind().GroupKind().String() + "/" + o.GetNamespace() + "/" + o.GetName()
}

func describe(o *unstructured.Unstructured) string {
	if ns := o.GetNamespace(); ns != "" {
		return o.GetKind() + " " + ns + "/" + o.GetName()
	}
	return o.GetKind() + " " + o.GetName()
}

// split separates a release's Deployments from the objects they need (namespace, secrets,
// service, config), keeping the release's order within each part and putting Namespaces first.
func split(objs []*unstructured.Unstructured) (resources, deployments []*unstructured.Unstructured) {
	var namespaces []*unstructured.Unstructured
	for _, o := range objs {
		switch {
		case o.GetKind() == "Namespace" && o.GroupVersionKind().Group == "":
			namespaces = append(namespaces, o)
		case o.GetKind() == "Deployment" && o.GroupVersionKind().Group == "apps":
			deployments = append(deployments, o)
		default:
			resources = append(resources, o)
		}
	}
	return append(namespaces, resources...), deployments
}
