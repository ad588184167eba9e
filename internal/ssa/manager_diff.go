package ssa

import (
	"context"
	"errors"
	"fmt"

	"github.com/pmezard/go-difflib/difflib"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	sigsyaml "sigs.k8s.io/yaml"
)

// Action is what applying an object would do.
type Action string

// Actions.
const (
	// Created: the object does not exist yet.
	Created Action = "created"
	// Configured: the object exists and applying changes it.
	Configured Action = "configured"
	// Unchanged: applying would not change the object.
	Unchanged Action = "unchanged"
	// Pruned: the object is in the stage's inventory but no longer in its release.
	Pruned Action = "to be pruned"
)

// Change is what applying one object would do, and for Configured, the diff.
type Change struct {
	Action Action
	Object ObjMeta
	// Diff is a unified diff of YAML from the live object to the object after apply, for
	// Configured; Secret values are masked.
	Diff string
	// ResourceVersion is the live object's, when it exists.
	ResourceVersion string
}

// DiffOptions configure Diff.
type DiffOptions struct {
	// Owner's labels are set on every object, as Apply sets them.
	Owner Owner
	// Set is every object applied together with the one diffed: an object whose Namespace or
	// CRD the set creates is Created even though the dry-run cannot say so.
	Set []*unstructured.Unstructured
}

// Diff dry-runs a server-side apply of obj and compares the result with the live object:
// two requests (a get and a dry-run apply). Whatever the dry-run leaves as it is live
// (normalised quantities, defaulted fields, fields other managers own) is never a change.
func (m *Manager) Diff(ctx context.Context, obj *unstructured.Unstructured, opts DiffOptions) (Change, error) {
	obj = opts.Owner.withLabels(obj)
	id := MetaOf(obj)
	change := Change{Object: id}
	ri, err := m.resource(id)
	if err != nil {
		if meta.IsNoMatchError(err) && definesKind(opts.Set, obj) {
			change.Action = Created // its CRD is created by the same release
			return change, nil
		}
		return change, err
	}
	live, err := ri.Get(ctx, id.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		live = nil
	case err != nil:
		return change, &ObjectError{Verb: "get", Object: id, Cluster: m.cluster, Err: err}
	default:
		change.ResourceVersion = live.GetResourceVersion()
	}
	applied, err := ri.Apply(ctx, id.Name, obj, metav1.ApplyOptions{
		FieldManager: m.opts.FieldManager, Force: true, DryRun: []string{metav1.DryRunAll},
	})
	if err != nil {
		if live == nil && namespaceMissing(err, id.Namespace) {
			change.Action = Created // its namespace is created first, by the release or ebb
			return change, nil
		}
		return change, &ObjectError{Verb: "dry-run apply", Object: id, Cluster: m.cluster, Err: err}
	}
	if live == nil {
		change.Action = Created
		return change, nil
	}
	before, after := comparable(live), comparable(applied)
	maskSecret(before, after)
	diff, err := unifiedDiff(before, after)
	if err != nil {
		return change, fmt.Errorf("diff %s: %w", id, err)
	}
	if diff == "" {
		change.Action = Unchanged
		return change, nil
	}
	change.Action, change.Diff = Configured, diff
	return change, nil
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

// definesKind reports whether set holds the CRD of obj's kind.
func definesKind(set []*unstructured.Unstructured, obj *unstructured.Unstructured) bool {
	gvk := obj.GroupVersionKind()
	for _, o := range set {
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
