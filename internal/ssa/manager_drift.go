package ssa

import (
	"context"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// DriftOptions configure Drift.
type DriftOptions struct {
	// Owner's labels are set on every object, as Apply sets them.
	Owner Owner
	// InSync maps an object's Key to the resourceVersion it had when last found in sync
	// (applied, or diffed unchanged). Drift reads and updates it; the caller keeps it from
	// one check to the next.
	InSync map[string]string
	// Live, when set, tells an object's live resourceVersion without a request.
	Live *LiveCache
}

// Drift returns the changes applying objs would make: an object missing or changed (by hand,
// by another tool) in a field ebb's field manager sets. It is Diff, made cheap for a stage at
// rest: an object whose live resourceVersion (from opts.Live) is the one it had when last in
// sync is unchanged without asking the API server; any other is diffed.
func (m *Manager) Drift(ctx context.Context, objs []*unstructured.Unstructured, opts DriftOptions) ([]Change, error) {
	var drifted []Change
	for _, obj := range objs {
		id := MetaOf(obj)
		if m.unchangedSince(ctx, id, opts) {
			continue
		}
		c, err := m.Diff(ctx, obj, DiffOptions{Owner: opts.Owner})
		if err != nil {
			return drifted, err
		}
		if c.Action == Unchanged {
			if opts.InSync != nil {
				opts.InSync[id.Key()] = c.ResourceVersion
			}
			continue
		}
		if opts.InSync != nil {
			delete(opts.InSync, id.Key())
		}
		drifted = append(drifted, c)
	}
	return drifted, nil
}

// unchangedSince reports whether the cache knows the object at the version it had when last
// in sync.
func (m *Manager) unchangedSince(ctx context.Context, id ObjMeta, opts DriftOptions) bool {
	want := opts.InSync[id.Key()]
	if opts.Live == nil || want == "" {
		return false
	}
	mapping, err := m.Mapping(id.GroupVersionKind())
	if err != nil {
		return false
	}
	rv, found, err := opts.Live.version(ctx, mapping, id)
	return err == nil && found && rv == want
}

// Remember records objects just applied as in sync at the versions the API server returned.
func Remember(inSync map[string]string, applied []Applied) {
	for _, a := range applied {
		inSync[a.Object.Key()] = a.ResourceVersion
	}
}

// Settle records as in sync, after a release was verified, the objects that changed since
// they were applied only in what their controllers write: those whose generation (which the
// API server raises on every change of the spec) is still the one applied, such as a
// Deployment whose status the rollout filled in. The next drift check then costs no request
// for them. Objects without a generation, or whose watch cannot tell yet, keep the
// resourceVersion they were applied at. It starts the live cache's watches it needs, but
// never waits for one to sync: it runs as a release ends, and must not delay it.
func (m *Manager) Settle(ctx context.Context, live *LiveCache, inSync map[string]string, applied []Applied) {
	for _, a := range applied {
		if a.Generation == 0 || inSync[a.Object.Key()] != a.ResourceVersion {
			continue // no generation to go by, or found changed (or in sync) since
		}
		mapping, err := m.Mapping(a.Object.GroupVersionKind())
		if err != nil {
			continue
		}
		rv, gen, ok, err := live.versionAndGeneration(ctx, mapping, a.Object, false)
		if err != nil || !ok || gen != a.Generation {
			continue
		}
		inSync[a.Object.Key()] = rv
	}
}
