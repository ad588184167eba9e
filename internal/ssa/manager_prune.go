package ssa

import (
	"context"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// AnnotationCreatedBy marks a Namespace ebb created (rather than found): only those are ever
// pruned, since deleting a Namespace deletes everything in it.
const AnnotationCreatedBy = "ebb.dev/created-by"

// PruneOptions configure Prune.
type PruneOptions struct {
	// Owner: only objects that carry its labels are deleted; an object that no longer does
	// was taken over by someone else.
	Owner Owner
	// DryRun reads what would be deleted and deletes nothing: what `ebb plan` shows.
	DryRun bool
	// Keep are the objects that stay (the release now running): a Namespace that holds any
	// of them is never deleted, even when it left the release.
	Keep []*unstructured.Unstructured
}

// Deletion is one object Prune deleted, or found gone.
type Deletion struct {
	ObjMeta
	// Exists is false for an object that was already gone.
	Exists bool
}

// PruneResult says what Prune did with each object.
type PruneResult struct {
	// Deleted objects (with DryRun, those that would be), and objects already gone.
	Deleted []Deletion
	// Kept objects, with why: annotated ebb.dev/prune: disabled, owned by someone else, or a
	// Namespace ebb did not create.
	Kept map[ObjMeta]string
}

// Prune deletes the objects of inv, in reverse apply order: workloads before the Services,
// ConfigMaps and Secrets they use, Namespaces last. It reads each object first (a get, then a
// delete with the read UID as precondition) and keeps those annotated ebb.dev/prune: disabled,
// those without the owner's labels, Namespaces ebb did not create and Namespaces that hold
// objects of opts.Keep. A kind the cluster no
// longer serves has no objects left to delete.
func (m *Manager) Prune(ctx context.Context, inv Inventory, opts PruneOptions) (PruneResult, error) {
	res := PruneResult{Kept: map[ObjMeta]string{}}
	inUse := map[string]bool{}
	for _, o := range opts.Keep {
		inUse[o.GetNamespace()] = true
	}
	order := append(Inventory(nil), inv...)
	sort.SliceStable(order, func(i, j int) bool { return less(order[j], order[i]) })
	for _, id := range order {
		if id.Kind == "Namespace" && id.Group == "" && inUse[id.Name] {
			res.Kept[id] = "a Namespace that holds objects of the release"
			continue
		}
		ri, err := m.resource(id)
		if err != nil {
			if meta.IsNoMatchError(err) {
				res.Deleted = append(res.Deleted, Deletion{ObjMeta: id})
				continue
			}
			return res, err
		}
		live, err := ri.Get(ctx, id.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			res.Deleted = append(res.Deleted, Deletion{ObjMeta: id})
			continue
		}
		if err != nil {
			return res, &ObjectError{Verb: "get", Object: id, Cluster: m.cluster, Err: err}
		}
		if why := keep(live, opts.Owner); why != "" {
			res.Kept[id] = why
			continue
		}
		if opts.DryRun {
			res.Deleted = append(res.Deleted, Deletion{ObjMeta: id, Exists: true})
			continue
		}
		uid := live.GetUID()
		policy := metav1.DeletePropagationBackground
		err = ri.Delete(ctx, id.Name, metav1.DeleteOptions{PropagationPolicy: &policy, Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return res, &ObjectError{Verb: "delete", Object: id, Cluster: m.cluster, Err: err}
		}
		if id.Kind == "Namespace" && id.Group == "" {
			m.namespaces.Delete(id.Name) // a release that has it again creates it, marked
		}
		res.Deleted = append(res.Deleted, Deletion{ObjMeta: id, Exists: true})
	}
	return res, nil
}

// keep says why live must not be pruned, or "".
func keep(live *unstructured.Unstructured, owner Owner) string {
	switch {
	case live.GetAnnotations()[AnnotationPrune] == PruneDisabled:
		return AnnotationPrune + ": " + PruneDisabled
	case owner.Pipeline != "" && !owner.owns(live):
		return "no longer labelled as this stage's"
	case live.GetKind() == "Namespace" && live.GroupVersionKind().Group == "" && live.GetAnnotations()[AnnotationCreatedBy] != FieldManager:
		return "a Namespace ebb did not create"
	}
	return ""
}
