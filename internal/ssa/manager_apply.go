package ssa

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
)

// ApplyOptions configure Apply.
type ApplyOptions struct {
	// Owner's labels are set on every object applied.
	Owner Owner
}

// Applied is one object as the API server stored it after an apply.
type Applied struct {
	Object          ObjMeta
	ResourceVersion string
	// Generation is the object's metadata.generation as applied: 0 for kinds whose API server
	// does not count changes of their spec (ConfigMaps, Services).
	Generation int64
}

// Apply server-side applies objs in order, as the Manager's field manager, taking ownership of
// conflicting fields: Git is the source of truth. One request per object. It stops at the
// first error, which names the object and wraps the API server's error.
func (m *Manager) Apply(ctx context.Context, objs []*unstructured.Unstructured, opts ApplyOptions) ([]Applied, error) {
	out := make([]Applied, 0, len(objs))
	for _, obj := range objs {
		obj = opts.Owner.withLabels(obj)
		id := MetaOf(obj)
		ri, err := m.resource(id)
		if err != nil {
			return out, err
		}
		if err := m.markCreated(ctx, ri, obj); err != nil {
			return out, err
		}
		live, err := ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: m.opts.FieldManager, Force: true})
		if err != nil {
			return out, &ObjectError{Verb: "apply", Object: id, Cluster: m.cluster, Err: err}
		}
		out = append(out, Applied{Object: id, ResourceVersion: live.GetResourceVersion(), Generation: live.GetGeneration()})
	}
	return out, nil
}

// markCreated creates a Namespace that does not exist yet with AnnotationCreatedBy, so that
// pruning later knows ebb created it. The annotation is written by a create, not by the apply,
// so later applies (which do not name it) leave it alone. The create is tried at once (one
// request, where a read first would cost two for a new Namespace), and a Namespace the Manager
// created or found existing is not tried again: its applies are one request each.
func (m *Manager) markCreated(ctx context.Context, ri dynamic.ResourceInterface, obj *unstructured.Unstructured) error {
	if obj.GetKind() != "Namespace" || obj.GroupVersionKind().Group != "" {
		return nil
	}
	name := obj.GetName()
	if _, ok := m.namespaces.Load(name); ok {
		return nil
	}
	ns := &unstructured.Unstructured{}
	ns.SetGroupVersionKind(obj.GroupVersionKind())
	ns.SetName(name)
	ns.SetAnnotations(map[string]string{AnnotationCreatedBy: FieldManager})
	_, err := ri.Create(ctx, ns, metav1.CreateOptions{FieldManager: m.opts.FieldManager})
	switch {
	case err == nil || apierrors.IsAlreadyExists(err):
		m.namespaces.Store(name, struct{}{})
		return nil
	case apierrors.IsForbidden(err):
		// ebb may be allowed to use a namespace and not to create one: the apply tells.
		return nil
	}
	return &ObjectError{Verb: "create", Object: MetaOf(obj), Cluster: m.cluster, Err: err}
}

// ObjectError is a request about one object that the API server (or the way to it) failed.
// Err is the API server's error, for errors.As and apierrors' predicates.
type ObjectError struct {
	Verb    string
	Object  ObjMeta
	Cluster string
	Err     error
}

func (e *ObjectError) Error() string {
	return fmt.Sprintf("%s %s in cluster %q: %v", e.Verb, e.Object, e.Cluster, e.Err)
}

func (e *ObjectError) Unwrap() error { return e.Err }
