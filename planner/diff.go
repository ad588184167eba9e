package planner

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"ebb.dev/ebb/internal/ssa"
)

// Action is what applying a release would do to one object: the apply engine's.
type Action = ssa.Action

// The actions a plan reports.
const (
	// Created: the object does not exist yet.
	Created = ssa.Created
	// Configured: the object exists and applying the release changes it.
	Configured = ssa.Configured
	// Unchanged: applying the release would not change the object.
	Unchanged = ssa.Unchanged
	// Pruned: the object is in the stage's inventory but no longer in the release; the
	// reconciler deletes it once the release is verified.
	Pruned = ssa.Pruned
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
	Notes     []string `json:"notes,omitempty"`
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
	return DiffOptions{FieldManager: ssa.FieldManager}
}

// Differ diffs releases against one cluster with the apply engine's read-only half. It only
// reads and dry-runs; it never writes.
type Differ struct {
	ssa    *ssa.Manager
	client dynamic.Interface
}

// NewDiffer returns a Differ for the cluster cfg reaches.
func NewDiffer(cfg *rest.Config, opts DiffOptions) (*Differ, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 {
		// A plan is a burst of reads (a get and a dry-run per object); client-go's default
		// of 5 per second would make it take seconds.
		cfg.QPS, cfg.Burst = 100, 200
	}
	m, err := ssa.New(cfg.Host, cfg, ssa.Options{FieldManager: opts.FieldManager})
	if err != nil {
		return nil, fmt.Errorf("create cluster client: %w", err)
	}
	return &Differ{ssa: m, client: m.Client()}, nil
}

// Diff dry-runs a server-side apply of every object of the release, exactly as the
// reconciler's drift check does, and lists what the reconciler would prune: the objects of
// inventory (what the stage's ledger says ebb applied there) that the release no longer has,
// except those it would keep (annotated ebb.dev/prune: disabled, taken over by someone else).
// A nil inventory (a stage never deployed, or a ledger that cannot be read) prunes nothing.
func (d *Differ) Diff(ctx context.Context, rel *Release, inventory ssa.Inventory) (*Plan, error) {
	plan := &Plan{
		Pipeline: rel.Pipeline, Stage: rel.Stage, Cluster: rel.Cluster, Namespace: rel.Namespace,
		Hash: rel.Hash, Images: rel.Images, Notes: rel.Notes,
	}
	created, err := d.namespaceToCreate(ctx, rel)
	if err != nil {
		return nil, fmt.Errorf("diff stage %q of pipeline %q: %w", rel.Stage, rel.Pipeline, err)
	}
	if created != nil {
		plan.Changes = append(plan.Changes, *created)
	}
	owner := ssa.Owner{Pipeline: rel.Pipeline, Stage: rel.Stage}
	objects := rel.Objects.Decode()
	for _, obj := range objects {
		c, err := d.ssa.Diff(ctx, obj, ssa.DiffOptions{Owner: owner, Set: objects})
		if err != nil {
			return nil, fmt.Errorf("diff %s of stage %q of pipeline %q: %w", RefOf(obj), rel.Stage, rel.Pipeline, err)
		}
		plan.Changes = append(plan.Changes, Change{Action: c.Action, Object: RefOf(obj), Diff: c.Diff})
	}
	res, err := d.ssa.Prune(ctx, inventory.Minus(ssa.InventoryOf(objects)), ssa.PruneOptions{Owner: owner, DryRun: true, Keep: objects})
	if err != nil {
		return nil, fmt.Errorf("find objects to prune for stage %q of pipeline %q: %w", rel.Stage, rel.Pipeline, err)
	}
	for _, id := range res.Deleted {
		if id.Exists {
			plan.Changes = append(plan.Changes, Change{Action: Pruned, Object: refOfMeta(id.ObjMeta)})
		}
	}
	return plan, nil
}

func refOfMeta(o ssa.ObjMeta) ObjectRef {
	apiVersion := o.Version
	if o.Group != "" {
		apiVersion = o.Group + "/" + o.Version
	}
	return ObjectRef{APIVersion: apiVersion, Kind: o.Kind, Namespace: o.Namespace, Name: o.Name}
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

// createsNamespace reports whether the release holds the Namespace ns.
func createsNamespace(rel *Release, ns string) bool {
	for _, o := range rel.Objects.Decode() {
		if o.GetKind() == "Namespace" && o.GroupVersionKind().Group == "" && o.GetName() == ns {
			return true
		}
	}
	return false
}
