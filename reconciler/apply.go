package reconciler

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"ebb.dev/ebb/internal/ratelimit"
	"ebb.dev/ebb/internal/ssa"
)

// FieldManager is the server-side apply field manager of everything ebb writes.
const FieldManager = ssa.FieldManager

// Cluster is one cluster a stage deploys to, with the clients ebb uses on it.
type Cluster struct {
	// Name is the cluster's name in the daemon config.
	Name    string
	Typed   kubernetes.Interface
	Dynamic dynamic.Interface
	// SSA applies, diffs and prunes; Live tells drift checks what changed without a request.
	SSA  *ssa.Manager
	Live *ssa.LiveCache

	// namespaces holds the namespaces EnsureNamespace created or found.
	namespaces sync.Map

	watchMu      sync.Mutex
	scopeDecided bool
	perNamespace bool                        // ebb may not list Deployments cluster-wide: watch per namespace
	watches      map[string]*deploymentWatch // by namespace, or "" for all
	watchStop    chan struct{}               // nil once closed
}

// NewCluster connects to a cluster. It does not contact the cluster yet: an unreachable
// cluster fails the stage that uses it, and nothing else.
func NewCluster(name string, cfg *rest.Config) (*Cluster, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 {
		// Hundreds of pipelines share one client per cluster.
		cfg.QPS, cfg.Burst = 100, 200
	}
	// Each client has a rate limit of its own, as client-go would give it, whose tokens go
	// to rollbacks and verifications first (ratelimit.Urgent).
	typed, err := kubernetes.NewForConfig(ratelimit.Config(cfg))
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", name, err)
	}
	dyn, err := dynamic.NewForConfig(ratelimit.Config(cfg))
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", name, err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(ratelimit.Config(cfg))
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", name, err)
	}
	live, err := ssa.NewLiveCache(ratelimit.Config(cfg))
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", name, err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	return &Cluster{Name: name, Typed: typed, Dynamic: dyn, Live: live,
		SSA:     ssa.NewWith(name, dyn, mapper, ssa.DefaultOptions()),
		watches: map[string]*deploymentWatch{}, watchStop: make(chan struct{})}, nil
}

// EnsureNamespace creates namespace ns unless it exists. It is left unlabelled and out of
// every inventory, so it is never pruned: deleting a namespace deletes everything in it. The
// create is tried first (one request for a new namespace, not a read and a create), and a
// namespace known to exist is not asked about again.
func (t *Cluster) EnsureNamespace(ctx context.Context, ns string) error {
	if ns == "" {
		return nil
	}
	if _, ok := t.namespaces.Load(ns); ok {
		return nil
	}
	_, err := t.Typed.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{FieldManager: FieldManager})
	if apierrors.IsForbidden(err) {
		// ebb may be allowed to use a namespace and not to create one.
		_, err = t.Typed.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("ensure namespace %s in cluster %q: %w", ns, t.Name, err)
	}
	t.namespaces.Store(ns, struct{}{})
	return nil
}

// forgetNamespace drops ns from the namespaces known to exist; it reports whether it was one.
func (t *Cluster) forgetNamespace(ns string) bool {
	_, ok := t.namespaces.LoadAndDelete(ns)
	return ok
}

// owner is the owner of what a stage applies.
func owner(pipeline, stage string) ssa.Owner { return ssa.Owner{Pipeline: pipeline, Stage: stage} }

// apply applies objs to a stage's cluster. Before anything is applied, the objects join the
// stage's inventory in its ledger, so that whatever a release (or a crash in the middle of
// it) leaves in the cluster is known, and pruned once a release without it is verified.
func (r *Reconciler) apply(ctx context.Context, cluster *Cluster, pipeline, stage string, objs []*unstructured.Unstructured) error {
	_, err := r.applyObjects(ctx, cluster, pipeline, stage, objs)
	return err
}

// applyObjects is apply, returning what was applied.
func (r *Reconciler) applyObjects(ctx context.Context, cluster *Cluster, pipeline, stage string, objs []*unstructured.Unstructured) ([]ssa.Applied, error) {
	if err := r.addToInventory(ctx, pipeline, stage, objs); err != nil {
		return nil, err
	}
	applied, err := cluster.SSA.Apply(ctx, objs, ssa.ApplyOptions{Owner: owner(pipeline, stage)})
	ssa.Remember(r.inSync(pipeline, stage), applied)
	return applied, err
}

// addToInventory adds objs to the stage's inventory, writing its ledger only when that adds
// something. A stage adds its whole release at its start (one write), so that its tasks'
// applies find it there.
func (r *Reconciler) addToInventory(ctx context.Context, pipeline, stage string, objs []*unstructured.Unstructured) error {
	add := ssa.InventoryOf(objs)
	return r.updateLedger(ctx, pipeline, stage, func(s *StageLedgerStatus) bool {
		next := s.Inventory.Union(add)
		if len(next) == len(s.Inventory) && len(next.Minus(s.Inventory)) == 0 {
			return false
		}
		s.Inventory = next
		return true
	})
}

// prune deletes what the stage's inventory holds beyond keep, the objects of the release it
// now runs, and makes keep the inventory. Objects annotated ebb.dev/prune: disabled (and those
// someone else took over) are kept in the cluster and leave the inventory.
func (r *Reconciler) prune(ctx context.Context, cluster *Cluster, pipeline, stage string, keep []*unstructured.Unstructured) ([]ssa.Deletion, error) {
	ledger, err := r.sharedLedger(ctx, pipeline, stage)
	if err != nil {
		return nil, err
	}
	next := ssa.InventoryOf(keep)
	res, err := cluster.SSA.Prune(ctx, ledger.Status.Inventory.Minus(next), ssa.PruneOptions{Owner: owner(pipeline, stage), Keep: keep})
	if err != nil {
		return res.Deleted, err
	}
	for id, why := range res.Kept {
		r.log.Info("not pruned", "pipeline", pipeline, "stage", stage, "object", id.String(), "why", why)
	}
	return res.Deleted, r.updateLedger(ctx, pipeline, stage, func(s *StageLedgerStatus) bool {
		if len(s.Inventory) == len(next) && len(s.Inventory.Minus(next)) == 0 {
			return false // nothing left the inventory: no write
		}
		s.Inventory = next
		return true
	})
}

// inSync returns the stage's objects as last found in sync (key -> resourceVersion), which
// lets a drift check of a stage at rest skip the API server.
func (r *Reconciler) inSync(pipeline, stage string) map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := pipeline + "/" + stage
	m := r.synced[key]
	if m == nil {
		m = map[string]string{}
		r.synced[key] = m
	}
	return m
}

func describe(o *unstructured.Unstructured) string { return ssa.MetaOf(o).String() }

// split separates a release's Deployments from the objects they need (namespace, secrets,
// service, config), keeping the release's order within each part and putting Namespaces first.
func split(objs []*unstructured.Unstructured) (resources, deployments []*unstructured.Unstructured) {
	var namespaces []*unstructured.Unstructured
	for _, o := range objs {
		switch {
		case o.GetKind() == "Namespace" && o.GroupVersionKind().Group == "":
			namespaces = append(namespaces, o)
		case o.GetKind() == "Deployment" && o.GroupVersionKind().Group == "apps":
			deployments = append(deployments, o)
		default:
			resources = append(resources, o)
		}
	}
	return append(namespaces, resources...), deployments
}
