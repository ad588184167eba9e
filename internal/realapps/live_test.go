package realapps

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/reconciler"
)

// appKinds are the kinds the apps (and the tests' additions to them) are made of.
var appKinds = []schema.GroupVersionResource{
	configMaps, services, {Group: "apps", Version: "v1", Resource: "deployments"}, autoscalers, ingresses, disruptions,
}

// liveObject is what says whether an object was written: its resourceVersion, and the managed
// fields entries of ebb's field manager (their time changes when ebb's apply changes
// anything).
type liveObject struct {
	resourceVersion string
	generation      int64
	ebb             string
	managers        string
}

// liveObjects reads the objects of a pipeline's stage in namespace ns, by "kind/name".
func liveObjects(t testing.TB, dyn dynamic.Interface, ns, pipeline string) map[string]liveObject {
	t.Helper()
	out := map[string]liveObject{}
	for _, gvr := range appKinds {
		list, err := dyn.Resource(gvr).Namespace(ns).List(context.Background(), metav1.ListOptions{LabelSelector: reconciler.LabelPipeline + "=" + pipeline})
		require.NoError(t, err)
		for _, o := range list.Items {
			var ebb, managers []string
			for _, mf := range o.GetManagedFields() {
				at := ""
				if mf.Time != nil {
					at = mf.Time.UTC().Format(time.RFC3339)
				}
				entry := fmt.Sprintf("%s/%s%s@%s", mf.Manager, mf.Operation, subresource(mf.Subresource), at)
				managers = append(managers, entry)
				if mf.Manager == reconciler.FieldManager {
					ebb = append(ebb, entry+" "+string(mf.FieldsV1.Raw))
				}
			}
			out[gvr.Resource+"/"+o.GetName()] = liveObject{
				resourceVersion: o.GetResourceVersion(), generation: o.GetGeneration(),
				ebb: strings.Join(ebb, "\n"), managers: strings.Join(managers, ", "),
			}
		}
	}
	return out
}

func subresource(s string) string {
	if s == "" {
		return ""
	}
	return "(" + s + ")"
}

// unchanged reports, one line each, the objects of before that were written since, or are
// gone.
func unchanged(before, after map[string]liveObject) []string {
	var changed []string
	for key, b := range before {
		a, ok := after[key]
		switch {
		case !ok:
			changed = append(changed, key+" is gone")
		case a.resourceVersion != b.resourceVersion:
			msg := fmt.Sprintf("%s: resourceVersion %s -> %s, generation %d -> %d; managers now: %s", key, b.resourceVersion, a.resourceVersion, b.generation, a.generation, a.managers)
			if a.ebb != b.ebb {
				msg += "; ebb's managed fields changed"
			}
			changed = append(changed, msg)
		}
	}
	sort.Strings(changed)
	return changed
}

// settle waits until the controllers are done with a stage's objects: every Deployment
// rolled out at its current generation, and every HorizontalPodAutoscaler has scaled its
// target to the replicas it wants and recorded so.
func settle(t testing.TB, cs kubernetes.Interface, ns string) {
	t.Helper()
	ctx := context.Background()
	var why string
	require.Eventually(t, func() bool {
		deps, err := cs.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			why = err.Error()
			return false
		}
		replicas := map[string]int32{}
		for _, d := range deps.Items {
			want := int32(1)
			if d.Spec.Replicas != nil {
				want = *d.Spec.Replicas
			}
			replicas[d.Name] = want
			s := d.Status
			if s.ObservedGeneration != d.Generation || s.Replicas != want || s.UpdatedReplicas != want || s.ReadyReplicas != want || s.AvailableReplicas != want {
				why = fmt.Sprintf("Deployment %s: generation %d observed %d, replicas %d/%d/%d/%d of %d", d.Name, d.Generation, s.ObservedGeneration, s.Replicas, s.UpdatedReplicas, s.ReadyReplicas, s.AvailableReplicas, want)
				return false
			}
		}
		hpas, err := cs.AutoscalingV2().HorizontalPodAutoscalers(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			why = err.Error()
			return false
		}
		for _, h := range hpas.Items {
			if !hpaSettled(&h, replicas[h.Spec.ScaleTargetRef.Name]) {
				why = fmt.Sprintf("HorizontalPodAutoscaler %s: current %d, desired %d, target runs %d", h.Name, h.Status.CurrentReplicas, h.Status.DesiredReplicas, replicas[h.Spec.ScaleTargetRef.Name])
				return false
			}
		}
		return true
	}, 2*time.Minute, 200*time.Millisecond, "the objects in %s never settled: %s", ns, &why)
}

// hpaSettled: the autoscaler saw its target at the replicas it wants (at least its minimum),
// and has looked at its metrics since (ScalingActive is set).
func hpaSettled(h *autoscalingv2.HorizontalPodAutoscaler, target int32) bool {
	min := int32(1)
	if h.Spec.MinReplicas != nil {
		min = *h.Spec.MinReplicas
	}
	active := false
	for _, c := range h.Status.Conditions {
		if c.Type == autoscalingv2.ScalingActive {
			active = true
		}
	}
	return active && h.Status.CurrentReplicas >= min && h.Status.CurrentReplicas == h.Status.DesiredReplicas && target == h.Status.DesiredReplicas
}

// exists reports whether the named object of a kind is in namespace ns, not being deleted.
func exists(t testing.TB, dyn dynamic.Interface, gvr schema.GroupVersionResource, ns, name string) bool {
	t.Helper()
	o, err := dyn.Resource(gvr).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false
	}
	require.NoError(t, err)
	return o.GetDeletionTimestamp() == nil
}

// Kinds the tests look objects up by.
var (
	configMaps  = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
	services    = schema.GroupVersionResource{Version: "v1", Resource: "services"}
	autoscalers = schema.GroupVersionResource{Group: "autoscaling", Version: "v2", Resource: "horizontalpodautoscalers"}
	ingresses   = schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "ingresses"}
	disruptions = schema.GroupVersionResource{Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"}
)
