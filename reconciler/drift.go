package reconciler

import (
	"context"
	"fmt"
	"sort"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"ebb.dev/ebb/internal/ssa"
	"ebb.dev/ebb/planner"
)

// driftChecksAtOnce bounds the pipelines that check drift at once. Checks that piled up (every
// pipeline of a shard just taken over, or of a daemon just started) then send their requests
// a few at a time, and a release's requests wait behind a few of theirs, not behind thousands,
// in the client's rate limit.
const driftChecksAtOnce = 4

// checkDrift compares each in-sync stage's objects in its cluster with the release, read-only:
// drift is a non-empty server-side apply dry-run diff (ssa.Manager.Drift), so values the API
// server stores in another form and fields other managers own are never drift. Objects changed
// by hand (or gone) are applied again when the stage self-heals (the default); otherwise the
// drift is only reported. A check gives way, before each stage, when newer closes (a commit to
// act on arrived): the next resync checks again.
func (r *Reconciler) checkDrift(ctx context.Context, t *Target, ledgers map[string]*StageLedgerStatus, newer <-chan struct{}) error {
	select {
	case r.driftSlots <- struct{}{}:
		defer func() { <-r.driftSlots }()
	case <-newer:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	for i := range t.Stages {
		select {
		case <-newer:
			return nil
		default:
		}
		d := &t.Stages[i]
		cur := ledgers[d.Stage.Name].Current
		if cur == nil {
			return nil // never deployed: later stages are not either
		}
		if cur.Hash != d.Hash {
			// Held on a restored release: compare with that one when this daemon has it.
			r.mu.Lock()
			good := r.good[t.Name()+"/"+d.Stage.Name]
			r.mu.Unlock()
			if good == nil || good.Hash != cur.Hash {
				continue
			}
			d = good
		}
		cluster, err := r.target(d.Stage.Cluster)
		if err != nil {
			continue
		}
		if err := r.restoreDrift(ctx, cluster, t.Name(), d, cur); err != nil {
			r.log.Warn("drift check", "pipeline", t.Name(), "stage", d.Stage.Name, "err", err)
		}
	}
	return nil
}

// restoreDrift finds the drift of one stage running release d and, when the stage self-heals,
// applies the drifted objects again.
func (r *Reconciler) restoreDrift(ctx context.Context, cluster *Cluster, pipeline string, d *Desired, cur *ReleaseRecord) error {
	objs, err := appliedObjects(d)
	if err != nil {
		return err
	}
	changes, err := cluster.SSA.Drift(ctx, objs, ssa.DriftOptions{
		Owner: owner(pipeline, d.Stage.Name), InSync: r.inSync(pipeline, d.Stage.Name), Live: cluster.Live,
	})
	result := "in-sync"
	switch {
	case err != nil:
		result = "error"
	case len(changes) > 0:
		result = "drifted"
	}
	r.metrics.driftChecks.WithLabelValues(pipeline, d.Stage.Name, result).Inc()
	if err != nil || len(changes) == 0 {
		return err
	}
	drifted := make([]*unstructured.Unstructured, 0, len(changes))
	what := make([]string, 0, len(changes))
	for _, c := range changes {
		drifted = append(drifted, findObject(objs, c.Object))
		what = append(what, fmt.Sprintf("%s (%s)", c.Object, driftKind(c.Action)))
	}
	if !d.Stage.SelfHeal {
		r.metrics.drift.WithLabelValues(pipeline, d.Stage.Name, "reported").Add(float64(len(drifted)))
		r.log.Warn("drift detected; selfHeal is off", "pipeline", pipeline, "stage", d.Stage.Name, "objects", what)
		return nil
	}
	if err := r.apply(ctx, cluster, pipeline, d.Stage.Name, drifted); err != nil {
		return fmt.Errorf("restore drift: %w", err)
	}
	r.metrics.drift.WithLabelValues(pipeline, d.Stage.Name, "restored").Add(float64(len(drifted)))
	r.log.Info("drift restored", "pipeline", pipeline, "stage", d.Stage.Name, "objects", what)
	for i, o := range drifted {
		recordEvent(ctx, cluster.Typed, r.log, eventRef{apiVersion: o.GetAPIVersion(), kind: o.GetKind(), namespace: o.GetNamespace(), name: o.GetName()},
			"Warning", "DriftRestored", fmt.Sprintf("ebb restored %s to the release of commit %s of pipeline %s", what[i], short(cur.Commit), pipeline))
	}
	return nil
}

func driftKind(a ssa.Action) string {
	if a == ssa.Created {
		return "deleted"
	}
	return "changed"
}

// AppliedObjects returns the objects of release rel as stage's model applies them: what
// `ebb plan` diffs, so that it shows what the daemon would change.
func AppliedObjects(stage *planner.Stage, rel *planner.Release) ([]*unstructured.Unstructured, error) {
	objs, err := appliedObjects(&Desired{Stage: stage, Hash: rel.Hash, Namespace: rel.Namespace,
		Deployment: rel.Deployment, Service: rel.Service, Images: rel.Images, Objects: rel.Objects})
	if err != nil {
		return nil, err
	}
	objs = append([]*unstructured.Unstructured(nil), objs...)
	sort.SliceStable(objs, func(i, j int) bool { return ssa.KindRank(objs[i].GetKind()) < ssa.KindRank(objs[j].GetKind()) })
	return objs, nil
}

// appliedObjects are the objects a stage running release d holds, as its model applied them:
// the release itself, or for blue-green its color, the Service pointed at it and the preview.
func appliedObjects(d *Desired) ([]*unstructured.Unstructured, error) {
	if d.Stage.Model != planner.ModelBlueGreen {
		return d.Objects.Decode(), nil
	}
	c, err := colorsOf(d)
	if err != nil {
		return nil, err
	}
	return c.objects(), nil
}

// findObject returns the object of objs that id names, or nil.
func findObject(objs []*unstructured.Unstructured, id ssa.ObjMeta) *unstructured.Unstructured {
	for _, o := range objs {
		if ssa.MetaOf(o).Key() == id.Key() {
			return o
		}
	}
	return nil
}
