package planner

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/pmezard/go-difflib/difflib"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	sigsyaml "sigs.k8s.io/yaml"
)

// Action is what applying a release would do to one object.
type Action string

// The actions a plan reports.
const (
	// Created: the object does not exist yet.
	Created Action = "created"
	// Configured: the object exists and applying the release changes it.
	Configured Action = "configured"
	// Unchanged: applying the release would not change the object.
	Unchanged Action = "unchanged"
	// Pruned: the object carries the stage's labels but is no longer in the release; the
	// reconciler deletes it.
	Pruned Action = "to be pruned"
)

// Change is the planned action on one object.
type Change struct {
	Action Action    `json:"action"`
	Object ObjectRef `json:"object"`
	// Diff is a unified diff from the live object to the object after apply, for
	// Configured. Secret values are masked.
	Diff string `json:"diff,omitempty"`
}

// Plan is what applying one stage's release would change in its cluster.
type Plan struct {
	Pipeline  string   `json:"pipeline"`
	Stage     string   `json:"stage"`
	Cluster   string   `json:"cluster"`
	Namespace string   `json:"namespace"`
	Hash      string   `json:"hash"`
	Images    []string `json:"images,omitempty"`
	Changes   []Change `json:"changes"`
}

// Changed reports whether applying the release would change anything.
func (p *Plan) Changed() bool {
	for _, c := range p.Changes {
		if c.Action != Unchanged {
			return true
		}
	}
	return false
}

// DiffOptions configure a Differ.
type DiffOptions struct {
	// FieldManager is the server-side apply field manager the dry-run applies as: the one the
	// reconciler applies with, so the diff is exactly what it would change.
	FieldManager string
}

// DefaultDiffOptions returns the options the daemon and the CLI use: field manager "ebb".
func DefaultDiffOptions() DiffOptions {
	return DiffOptions{FieldManager: "ebb"}
}

// Differ diffs releases against one cluster. It only reads and dry-runs; it never writes.
type Differ struct {
	opts      DiffOptions
	client    dynamic.Interface
	discovery discovery.CachedDiscoveryInterface
	mapper    meta.ResettableRESTMapper

	once      sync.Once
	prunable  []schema.GroupVersionResource
	pruneErrs error
}

// NewDiffer returns a Differ for the cluster cfg reaches.
func NewDiffer(cfg *rest.Config, opts DiffOptions) (*Differ, error) {
	if opts.FieldManager == "" {
		opts.FieldManager = DefaultDiffOptions().FieldManager
	}
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 {
		// A plan is a burst of reads (a dry-run per object and a list per resource type for
		// pruning); client-go's default of 5 per second would make it take seconds.
		cfg.QPS, cfg.Burst = 100, 200
	}
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create cluster client: %w", err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create discovery client: %w", err)
	}
	cached := memory.NewMemCacheClient(dc)
	return &Differ{
		opts: opts, client: client, discovery: cached,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(cached),
	}, nil
}

// Diff dry-runs a server-side apply of every object of the release and lists the live
// objects of the stage that the release no longer has.
func (d *Differ) Diff(ctx context.Context, rel *Release) (*Plan, error) {
	plan := &Plan{
		Pipeline: rel.Pipeline, Stage: rel.Stage, Cluster: rel.Cluster, Namespace: rel.Namespace,
		Hash: rel.Hash, Images: rel.Images,
	}
	created, err := d.namespaceToCreate(ctx, rel)
	if err != nil {
		return nil, fmt.Errorf("diff stage %q of pipeline %q: %w", rel.Stage, rel.Pipeline, err)
	}
	if created != nil {
		plan.Changes = append(plan.Changes, *created)
	}
	for _, obj := range rel.Objects {
		change, err := d.diffObject(ctx, rel, obj)
		if err != nil {
			return nil, fmt.Errorf("diff %s of stage %q of pipeline %q: %w", RefOf(obj), rel.Stage, rel.Pipeline, err)
		}
		plan.Changes = append(plan.Changes, change)
	}
	pruned, err := d.findPruned(ctx, rel)
	if err != nil {
		return nil, fmt.Errorf("find objects to prune for stage %q of pipeline %q: %w", rel.Stage, rel.Pipeline, err)
	}
	plan.Changes = append(plan.Changes, pruned...)
	return plan, nil
}

// diffObject compares the live object with the result of a dry-run apply.
func (d *Differ) diffObject(ctx context.Context, rel *Release, obj *unstructured.Unstructured) (Change, error) {
	change := Change{Object: RefOf(obj)}
	ri, err := d.resourceFor(obj)
	if err != nil {
		if meta.IsNoMatchError(err) && definesKind(rel, obj.GroupVersionKind()) {
			change.Action = Created // its CRD is created by the same release
			return change, nil
		}
		return change, err
	}
	live, err := ri.Get(ctx, obj.GetName(), metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		live = nil
	case err != nil:
		return change, fmt.Errorf("get: %w", err)
	}
	applied, err := ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{
		FieldManager: d.opts.FieldManager, Force: true, DryRun: []string{metav1.DryRunAll},
	})
	if err != nil {
		if live == nil && namespaceMissing(err, obj.GetNamespace()) {
			change.Action = Created // its namespace is created first, by the release or the reconciler
			return change, nil
		}
		return change, fmt.Errorf("dry-run apply: %w", err)
	}
	if live == nil {
		change.Action = Created
		return change, nil
	}
	before, after := comparable(live), comparable(applied)
	maskSecret(before, after)
	diff, err := unifiedDiff(before, after)
	if err != nil {
		return change, err
	}
	if diff == "" {
		change.Action = Unchanged
		return change, nil
	}
	change.Action, change.Diff = Configured, diff
	return change, nil
}

// resourceFor returns the client of the object's resource, namespaced if it is.
func (d *Differ) resourceFor(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	mapping, err := d.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		d.mapper.Reset() // a CRD may have been installed since discovery was cached
		mapping, err = d.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, err
	}
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		return d.client.Resource(mapping.Resource).Namespace(obj.GetNamespace()), nil
	}
	return d.client.Resource(mapping.Resource), nil
}

// findPruned lists, in every resource that can be listed and deleted, the objects with the
// stage's labels that the release does not contain. Objects a controller owns are left out:
// they carry the labels because their owner's template does.
func (d *Differ) findPruned(ctx context.Context, rel *Release) ([]Change, error) {
	resources, err := d.prunableResources()
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, o := range rel.Objects {
		want[pruneKey(o)] = true
	}
	selector := fmt.Sprintf("%s=%s,%s=%s", LabelPipeline, rel.Pipeline, LabelStage, rel.Stage)
	var changes []Change
	for _, gvr := range resources {
		list, err := d.client.Resource(gvr).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			if apierrors.IsForbidden(err) || apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err) {
				continue
			}
			return nil, fmt.Errorf("list %s: %w", gvr.GroupResource(), err)
		}
		for i := range list.Items {
			o := &list.Items[i]
			if want[pruneKey(o)] || metav1.GetControllerOf(o) != nil {
				continue
			}
			changes = append(changes, Change{Action: Pruned, Object: RefOf(o)})
		}
	}
	sort.Slice(changes, func(i, j int) bool { return changes[i].Object.String() < changes[j].Object.String() })
	return changes, nil
}

// pruneKey identifies an object across API versions of its group.
func pruneKey(o *unstructured.Unstructured) string {
	gvk := o.GroupVersionKind()
	return gvk.Group + "/" + gvk.Kind + "/" + o.GetNamespace() + "/" + o.GetName()
}

// prunableResources returns the preferred version of every resource that supports list and
// delete, discovered once per Differ.
func (d *Differ) prunableResources() ([]schema.GroupVersionResource, error) {
	d.once.Do(func() {
		lists, err := d.discovery.ServerPreferredResources()
		if err != nil && !discovery.IsGroupDiscoveryFailedError(err) {
			d.pruneErrs = fmt.Errorf("discover resources: %w", err)
			return
		}
		for _, l := range lists {
			gv, err := schema.ParseGroupVersion(l.GroupVersion)
			if err != nil {
				continue
			}
			for _, r := range l.APIResources {
				if strings.Contains(r.Name, "/") || !hasVerbs(r.Verbs, "list", "delete") || skipPrune(gv.Group, r.Kind) {
					continue
				}
				d.prunable = append(d.prunable, gv.WithResource(r.Name))
			}
		}
	})
	return d.prunable, d.pruneErrs
}

// skipPrune leaves out what a release never holds: events and what controllers make.
func skipPrune(group, kind string) bool {
	switch group + "/" + kind {
	case "/Event", "events.k8s.io/Event", "/Pod", "apps/ReplicaSet", "apps/ControllerRevision",
		"discovery.k8s.io/EndpointSlice", "/Endpoints", "coordination.k8s.io/Lease":
		return true
	}
	return false
}

func hasVerbs(verbs metav1.Verbs, want ...string) bool {
	for _, w := range want {
		found := false
		for _, v := range verbs {
			if v == w {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// namespaceToCreate returns the creation of the stage's namespace when it does not exist and
// the release does not hold it: the reconciler creates it before applying the release.
func (d *Differ) namespaceToCreate(ctx context.Context, rel *Release) (*Change, error) {
	if rel.Namespace == "" || createsNamespace(rel, rel.Namespace) {
		return nil, nil
	}
	gvr := schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	_, err := d.client.Resource(gvr).Get(ctx, rel.Namespace, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return &Change{Action: Created, Object: ObjectRef{APIVersion: "v1", Kind: "Namespace", Name: rel.Namespace}}, nil
	case err != nil:
		return nil, fmt.Errorf("get namespace %q: %w", rel.Namespace, err)
	}
	return nil, nil
}

// namespaceMissing reports whether err says that namespace ns does not exist.
func namespaceMissing(err error, ns string) bool {
	var status apierrors.APIStatus
	if !apierrors.IsNotFound(err) || !errors.As(err, &status) {
		return false
	}
	details := status.Status().Details
	return details != nil && details.Kind == "namespaces" && details.Name == ns
}

// createsNamespace reports whether the release holds the Namespace ns.
func createsNamespace(rel *Release, ns string) bool {
	for _, o := range rel.Objects {
		if o.GetKind() == "Namespace" && o.GroupVersionKind().Group == "" && o.GetName() == ns {
			return true
		}
	}
	return false
}

// definesKind reports whether the release holds the CRD of gvk.
func definesKind(rel *Release, gvk schema.GroupVersionKind) bool {
	for _, o := range rel.Objects {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		group, _, _ := unstructured.NestedString(o.Object, "spec", "group")
		kind, _, _ := unstructured.NestedString(o.Object, "spec", "names", "kind")
		if group == gvk.Group && kind == gvk.Kind {
			return true
		}
	}
	return false
}

// comparable returns a copy of an object without the fields the server changes on every
// write or that apply does not set: status, managedFields, resourceVersion, generation.
func comparable(o *unstructured.Unstructured) *unstructured.Unstructured {
	c := o.DeepCopy()
	delete(c.Object, "status")
	unstructured.RemoveNestedField(c.Object, "metadata", "managedFields")
	unstructured.RemoveNestedField(c.Object, "metadata", "resourceVersion")
	unstructured.RemoveNestedField(c.Object, "metadata", "generation")
	return c
}

// unifiedDiff returns the diff of two objects as YAML, "" when they are equal.
func unifiedDiff(before, after *unstructured.Unstructured) (string, error) {
	a, err := sigsyaml.Marshal(before.Object)
	if err != nil {
		return "", err
	}
	b, err := sigsyaml.Marshal(after.Object)
	if err != nil {
		return "", err
	}
	if string(a) == string(b) {
		return "", nil
	}
	return difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(string(a)), B: difflib.SplitLines(string(b)),
		FromFile: "live", ToFile: "desired", Context: 3,
	})
}

// Masks shown for Secret values: a value that changes shows a different mask.
const (
	maskValue   = "*** (masked)"
	maskChanged = "*** (masked, changed)"
)

// maskSecret replaces the values of a Secret's data and stringData so that no diff, log or
// record shows them, while a changed value still shows as a changed line. It also drops the
// last-applied annotation, which holds the values in clear.
func maskSecret(before, after *unstructured.Unstructured) {
	if before.GetKind() != "Secret" || before.GroupVersionKind().Group != "" {
		return
	}
	for _, field := range []string{"data", "stringData"} {
		b, _, _ := unstructured.NestedMap(before.Object, field)
		a, _, _ := unstructured.NestedMap(after.Object, field)
		for k, av := range a {
			if bv, ok := b[k]; ok && fmt.Sprint(bv) != fmt.Sprint(av) {
				a[k] = maskChanged
			} else {
				a[k] = maskValue
			}
		}
		for k := range b {
			b[k] = maskValue
		}
		if b != nil {
			_ = unstructured.SetNestedMap(before.Object, b, field)
		}
		if a != nil {
			_ = unstructured.SetNestedMap(after.Object, a, field)
		}
	}
	for _, o := range []*unstructured.Unstructured{before, after} {
		unstructured.RemoveNestedField(o.Object, "metadata", "annotations", "kubectl.kubernetes.io/last-applied-configuration")
	}
}
