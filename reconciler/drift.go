package reconciler

import (
	"context"
	"encoding/base64"
	"fmt"
	"reflect"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// checkDrift compares each in-sync stage's objects in its cluster with the release, read-only.
// Objects changed by hand (a field the release sets now differs, or the object is gone) are
// applied again when the stage self-heals (the default); otherwise the drift is only reported.
func (r *Reconciler) checkDrift(ctx context.Context, t *Target) error {
	ledgers, err := r.ledgers(ctx, t)
	if err != nil {
		return err
	}
	for i := range t.Stages {
		d := &t.Stages[i]
		cur := ledgers[d.Stage.Name].Current
		if cur == nil {
			return nil // never deployed: later stages are not either
		}
		objs := d.Objects
		if cur.Hash != d.Hash {
			// Held on a restored release: compare with that one when this daemon has it.
			r.mu.Lock()
			good := r.good[t.Name()+"/"+d.Stage.Name]
			r.mu.Unlock()
			if good == nil || good.Hash != cur.Hash {
				continue
			}
			objs = good.Objects
		}
		cluster, err := r.target(d.Stage.Cluster)
		if err != nil {
			continue
		}
		drifted, err := cluster.drifted(ctx, t.Name(), d.Stage.Name, objs)
		if err != nil {
			r.log.Warn("drift check", "pipeline", t.Name(), "stage", d.Stage.Name, "err", err)
			continue
		}
		if len(drifted) == 0 {
			continue
		}
		if !d.Stage.SelfHeal {
			r.metrics.drift.WithLabelValues(t.Name(), d.Stage.Name, "reported").Add(float64(len(drifted)))
			r.log.Warn("drift detected; selfHeal is off", "pipeline", t.Name(), "stage", d.Stage.Name, "objects", describeAll(drifted))
			continue
		}
		resources, deployments := split(drifted)
		if err := cluster.Apply(ctx, t.Name(), d.Stage.Name, append(resources, deployments...)); err != nil {
			r.log.Error("restore drift", "pipeline", t.Name(), "stage", d.Stage.Name, "err", err)
			continue
		}
		r.metrics.drift.WithLabelValues(t.Name(), d.Stage.Name, "restored").Add(float64(len(drifted)))
		r.log.Info("drift restored", "pipeline", t.Name(), "stage", d.Stage.Name, "objects", describeAll(drifted))
		for _, o := range drifted {
			recordEvent(ctx, cluster.Typed, r.log, eventRef{apiVersion: o.GetAPIVersion(), kind: o.GetKind(), namespace: o.GetNamespace(), name: o.GetName()},
				"Warning", "DriftRestored", fmt.Sprintf("ebb restored %s to the release of commit %s of pipeline %s", describe(o), short(cur.Commit), t.Name()))
		}
	}
	return nil
}

// drifted returns the objects of a release whose live copy is missing or differs in a field
// the release sets.
func (c *Cluster) drifted(ctx context.Context, pipeline, stage string, objs []*unstructured.Unstructured) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	for _, want := range objs {
		want = withOwnerLabels(want, pipeline, stage)
		ri, err := c.resource(want)
		if err != nil {
			return nil, err
		}
		live, err := ri.Get(ctx, want.GetName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			out = append(out, want)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", describe(want), err)
		}
		if !covers(live.Object, comparable(want)) {
			out = append(out, want)
		}
	}
	return out, nil
}

// comparable returns the fields of want that drift is judged on: everything but status, and
// of the metadata only labels and annotations (the server owns the rest).
func comparable(want *unstructured.Unstructured) map[string]any {
	out := map[string]any{}
	for k, v := range asStored(want).Object {
		switch k {
		case "status":
		case "metadata":
			meta := map[string]any{}
			if l := want.GetLabels(); len(l) > 0 {
				meta["labels"] = toAnyMap(l)
			}
			if a := want.GetAnnotations(); len(a) > 0 {
				meta["annotations"] = toAnyMap(a)
			}
			out[k] = meta
		default:
			out[k] = v
		}
	}
	return out
}

// asStored returns want as the API server stores it, where that differs from how it is
// written: a Secret's stringData is stored base64-encoded in data.
func asStored(want *unstructured.Unstructured) *unstructured.Unstructured {
	if want.GetKind() != "Secret" || want.GetAPIVersion() != "v1" {
		return want
	}
	stringData, ok, _ := unstructured.NestedStringMap(want.Object, "stringData")
	if !ok {
		return want
	}
	stored := want.DeepCopy()
	data, _, _ := unstructured.NestedMap(stored.Object, "data")
	if data == nil {
		data = map[string]any{}
	}
	for k, v := range stringData {
		data[k] = base64.StdEncoding.EncodeToString([]byte(v))
	}
	delete(stored.Object, "stringData")
	_ = unstructured.SetNestedMap(stored.Object, data, "data")
	return stored
}

func toAnyMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// covers reports whether live holds every field of want with the same value. Fields only the
// server sets (defaults) do not count as drift.
func covers(live, want any) bool {
	switch w := want.(type) {
	case map[string]any:
		l, ok := live.(map[string]any)
		if !ok {
			return false
		}
		for k, wv := range w {
			lv, ok := l[k]
			if !ok {
				if wv == nil {
					continue
				}
				return false
			}
			if !covers(lv, wv) {
				return false
			}
		}
		return true
	case []any:
		l, ok := live.([]any)
		if !ok || len(l) != len(w) {
			return false
		}
		for i := range w {
			if !covers(l[i], w[i]) {
				return false
			}
		}
		return true
	case int64:
		return numEqual(live, float64(w))
	case float64:
		return numEqual(live, w)
	default:
		return reflect.DeepEqual(live, want)
	}
}

func numEqual(live any, w float64) bool {
	switch l := live.(type) {
	case int64:
		return float64(l) == w
	case float64:
		return l == w
	}
	return false
}

func describeAll(objs []*unstructured.Unstructured) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = describe(o)
	}
	return out
}
