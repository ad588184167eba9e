package ssa

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// Health is what kstatus reads of one live object: Current (ready), InProgress, Failed,
// Terminating or NotFound, with its message ("Ready: 0/1").
type Health struct {
	Object  ObjMeta
	Status  status.Status
	Message string
}

func (h Health) String() string {
	if h.Message == "" {
		return fmt.Sprintf("%s: %s", h.Object, h.Status)
	}
	return fmt.Sprintf("%s: %s: %s", h.Object, h.Status, h.Message)
}

// HasHealth reports whether an object's readiness means something beyond its existence:
// workloads other than Deployments (which a rollout check follows), Jobs, Pods, claims,
// and custom resources, whose controllers report Ready, Reconciling or Stalled conditions.
// Services are left out (a LoadBalancer without a load balancer never is Current), as are
// configuration, policy and RBAC objects, which are ready once they exist.
func HasHealth(obj *unstructured.Unstructured) bool {
	gvk := obj.GroupVersionKind()
	switch gvk.Group {
	case "apps":
		return gvk.Kind == "StatefulSet" || gvk.Kind == "DaemonSet" || gvk.Kind == "ReplicaSet"
	case "batch":
		return gvk.Kind == "Job"
	case "":
		return gvk.Kind == "Pod" || gvk.Kind == "PersistentVolumeClaim"
	}
	return !builtinGroup(gvk.Group)
}

// builtinGroup reports whether group is one of Kubernetes' own API groups.
func builtinGroup(group string) bool {
	switch group {
	case "", "apps", "batch", "autoscaling", "policy", "networking.k8s.io", "rbac.authorization.k8s.io",
		"storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "node.k8s.io",
		"admissionregistration.k8s.io", "apiextensions.k8s.io", "apiregistration.k8s.io", "certificates.k8s.io",
		"events.k8s.io", "flowcontrol.apiserver.k8s.io", "resource.k8s.io", "storagemigration.k8s.io":
		return true
	}
	return false
}

// Health reads each object from the cluster and computes its kstatus status. An object
// that is gone is NotFound; an error reading one is returned.
func (m *Manager) Health(ctx context.Context, objs []*unstructured.Unstructured) ([]Health, error) {
	out := make([]Health, 0, len(objs))
	for _, obj := range objs {
		id := MetaOf(obj)
		ri, err := m.resource(id)
		if err != nil {
			return nil, err
		}
		live, err := ri.Get(ctx, id.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			out = append(out, Health{Object: id, Status: status.NotFoundStatus, Message: "not found"})
			continue
		}
		if err != nil {
			return nil, &ObjectError{Verb: "get", Object: id, Cluster: m.cluster, Err: err}
		}
		res, err := status.Compute(live)
		if err != nil {
			return nil, fmt.Errorf("compute the status of %s in cluster %q: %w", id, m.cluster, err)
		}
		out = append(out, Health{Object: id, Status: res.Status, Message: res.Message})
	}
	return out, nil
}
