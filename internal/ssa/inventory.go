package ssa

import (
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// ObjMeta identifies one object in a cluster: its group, kind, namespace and name, and the
// version it was applied with (to reach it again; the identity does not depend on it).
type ObjMeta struct {
	Group     string `json:"group,omitempty"`
	Version   string `json:"version"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

// MetaOf returns the identity of obj.
func MetaOf(obj *unstructured.Unstructured) ObjMeta {
	gvk := obj.GroupVersionKind()
	return ObjMeta{Group: gvk.Group, Version: gvk.Version, Kind: gvk.Kind, Namespace: obj.GetNamespace(), Name: obj.GetName()}
}

// GroupVersionKind returns the object's group, version and kind.
func (o ObjMeta) GroupVersionKind() schema.GroupVersionKind {
	return schema.GroupVersionKind{Group: o.Group, Version: o.Version, Kind: o.Kind}
}

// Key identifies the object across API versions of its group: group/kind/namespace/name.
func (o ObjMeta) Key() string { return o.Group + "/" + o.Kind + "/" + o.Namespace + "/" + o.Name }

// String names the object as people read it: "Deployment web/guestbook-ui".
func (o ObjMeta) String() string {
	if o.Namespace == "" {
		return o.Kind + " " + o.Name
	}
	return o.Kind + " " + o.Namespace + "/" + o.Name
}

// Inventory is a set of objects: what a stage's releases applied and ebb has not deleted
// since. It is kept sorted by apply order, so it reads (and serializes) the same every time.
type Inventory []ObjMeta

// InventoryOf returns the inventory of objs.
func InventoryOf(objs []*unstructured.Unstructured) Inventory {
	inv := make(Inventory, 0, len(objs))
	for _, o := range objs {
		inv = append(inv, MetaOf(o))
	}
	return inv.normalize()
}

// Union returns the objects of inv and other; other's version wins for an object in both.
func (inv Inventory) Union(other Inventory) Inventory {
	out := make(Inventory, 0, len(inv)+len(other))
	out = append(out, inv...)
	return append(out, other...).normalize()
}

// Minus returns the objects of inv that are not in other: what pruning deletes when other
// replaces inv.
func (inv Inventory) Minus(other Inventory) Inventory {
	keep := make(map[string]bool, len(other))
	for _, o := range other {
		keep[o.Key()] = true
	}
	var out Inventory
	for _, o := range inv {
		if !keep[o.Key()] {
			out = append(out, o)
		}
	}
	return out
}

// Has reports whether inv holds the object o names.
func (inv Inventory) Has(o ObjMeta) bool {
	for _, x := range inv {
		if x.Key() == o.Key() {
			return true
		}
	}
	return false
}

// normalize removes duplicates (the last one of a key wins) and sorts by apply order.
func (inv Inventory) normalize() Inventory {
	seen := make(map[string]int, len(inv))
	out := inv[:0:0]
	for _, o := range inv {
		if i, ok := seen[o.Key()]; ok {
			out[i] = o
			continue
		}
		seen[o.Key()] = len(out)
		out = append(out, o)
	}
	sort.SliceStable(out, func(i, j int) bool { return less(out[i], out[j]) })
	return out
}

func less(a, b ObjMeta) bool {
	if ra, rb := KindRank(a.Kind), KindRank(b.Kind); ra != rb {
		return ra < rb
	}
	return strings.Compare(a.Key(), b.Key()) < 0
}

// applyOrder ranks kinds so that what others depend on comes first: namespaces before what
// lives in them, CRDs before custom resources, config before the workloads reading it.
// Pruning deletes in the reverse order: workloads before the Services and ConfigMaps they
// use, Namespaces last.
var applyOrder = map[string]int{}

func init() {
	kinds := []string{
		"Namespace", "ResourceQuota", "LimitRange", "PriorityClass", "StorageClass",
		"CustomResourceDefinition", "ServiceAccount", "PodSecurityPolicy", "Role", "ClusterRole",
		"RoleBinding", "ClusterRoleBinding", "ConfigMap", "Secret", "Endpoints",
		"PersistentVolume", "PersistentVolumeClaim", "NetworkPolicy", "Service", "DaemonSet",
		"Pod", "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
		"StatefulSet", "Job", "CronJob", "PodDisruptionBudget", "IngressClass", "Ingress",
		"APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
	}
	for i, k := range kinds {
		applyOrder[k] = i + 1
	}
}

// KindRank is kind's place in apply order; unknown kinds (custom resources) come last.
func KindRank(kind string) int {
	if r, ok := applyOrder[kind]; ok {
		return r
	}
	return len(applyOrder) + 1
}
