package ssa_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"

	"ebb.dev/ebb/internal/ssa"
)

// counter counts the requests a client sends.
type counter struct{ n atomic.Int64 }

func (c *counter) wrap(cfg *rest.Config) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 500, 1000
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(r *http.Request) (*http.Response, error) {
			c.n.Add(1)
			return rt.RoundTrip(r)
		})
	})
	return cfg
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// newManager returns a Manager over the test cluster, counting its requests.
func newManager(t testing.TB) (*ssa.Manager, *counter) {
	t.Helper()
	c := &counter{}
	m, err := ssa.New("test", c.wrap(cluster.Config), ssa.DefaultOptions())
	require.NoError(t, err)
	return m, c
}

// namespace creates a namespace for one test.
func namespace(t testing.TB) string {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	ns, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ssa-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}) })
	return ns.Name
}

// objects parses YAML documents, setting namespace ns on each namespaced one.
func objects(t testing.TB, ns, docs string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, doc := range strings.Split(docs, "\n---\n") {
		u := &unstructured.Unstructured{}
		require.NoError(t, yaml.Unmarshal([]byte(doc), &u.Object))
		if u.GetKind() != "Namespace" {
			u.SetNamespace(ns)
		}
		out = append(out, u)
	}
	return out
}

// podinfo has the values the API server stores in another form: cpu 2000m is "2", 0.5 is
// 500m, 1.5Gi stays, data: {} is dropped; and no replicas (an HPA owns them).
const podinfo = `apiVersion: apps/v1
kind: Deployment
metadata: {name: podinfo}
spec:
  minReadySeconds: 3
  selector: {matchLabels: {app: podinfo}}
  template:
    metadata: {labels: {app: podinfo}}
    spec:
      containers:
      - name: podinfod
        image: ghcr.io/stefanprodan/podinfo:6.14.1
        ports: [{name: http, containerPort: 9898}]
        resources:
          limits: {cpu: 2000m, memory: 1.5Gi}
          requests: {cpu: "0.5", memory: 64Mi}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: empty}
data: {}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: hunter2}
---
apiVersion: v1
kind: Service
metadata: {name: podinfo}
spec:
  selector: {app: podinfo}
  ports: [{name: http, port: 9898, targetPort: http}]`

var owner = ssa.Owner{Pipeline: "podinfo", Stage: "dev"}

// TestStoredFormsAreNotDrift applies objects whose values the API server normalises, then
// finds no drift; a change of a field ebb sets, or a deletion, is drift; a field another
// manager owns (replicas, as an HPA sets them) is not.
func TestStoredFormsAreNotDrift(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	m, _ := newManager(t)
	objs := objects(t, ns, podinfo)
	_, err := m.Apply(ctx, objs, ssa.ApplyOptions{Owner: owner})
	require.NoError(t, err)

	drift, err := m.Drift(ctx, objs, ssa.DriftOptions{Owner: owner})
	require.NoError(t, err)
	assert.Empty(t, drift, "normalised values are not drift")

	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	// The controllers write the Deployment meanwhile: each edit retries its conflicts.
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		scale, err := cs.AppsV1().Deployments(ns).GetScale(ctx, "podinfo", metav1.GetOptions{})
		if err != nil {
			return err
		}
		scale.Spec.Replicas = 4
		_, err = cs.AppsV1().Deployments(ns).UpdateScale(ctx, "podinfo", scale, metav1.UpdateOptions{FieldManager: "horizontal-pod-autoscaler"})
		return err
	}))
	drift, err = m.Drift(ctx, objs, ssa.DriftOptions{Owner: owner})
	require.NoError(t, err)
	assert.Empty(t, drift, "replicas set by another manager, which the release does not set, are not drift")

	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "podinfo", metav1.GetOptions{})
		if err != nil {
			return err
		}
		d.Spec.Template.Spec.Containers[0].Image = "ghcr.io/stefanprodan/podinfo:hand-edit"
		_, err = cs.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{FieldManager: "kubectl-edit"})
		return err
	}))
	require.NoError(t, cs.CoreV1().Services(ns).Delete(ctx, "podinfo", metav1.DeleteOptions{}))
	drift, err = m.Drift(ctx, objs, ssa.DriftOptions{Owner: owner})
	require.NoError(t, err)
	require.Len(t, drift, 2)
	assert.Equal(t, ssa.Configured, drift[0].Action)
	assert.Equal(t, "Deployment "+ns+"/podinfo", drift[0].Object.String())
	assert.Contains(t, drift[0].Diff, "+      - image: ghcr.io/stefanprodan/podinfo:6.14.1")
	assert.Equal(t, ssa.Created, drift[1].Action)
	assert.Equal(t, "Service "+ns+"/podinfo", drift[1].Object.String())
}

// TestDriftAtRestAsksNothing: once objects are known in sync, a drift check that the live
// cache can answer sends no request; a change by hand is still found.
func TestDriftAtRestAsksNothing(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	m, requests := newManager(t)
	live, err := ssa.NewLiveCache(cluster.Config)
	require.NoError(t, err)
	t.Cleanup(live.Close)
	objs := objects(t, ns, podinfo)
	inSync := map[string]string{}
	applied, err := m.Apply(ctx, objs, ssa.ApplyOptions{Owner: owner})
	require.NoError(t, err)
	ssa.Remember(inSync, applied)
	opts := ssa.DriftOptions{Owner: owner, InSync: inSync, Live: live}

	// The first checks diff what changed since the apply (the Deployment's status).
	require.Eventually(t, func() bool {
		before := requests.n.Load()
		drift, err := m.Drift(ctx, objs, opts)
		require.NoError(t, err)
		require.Empty(t, drift)
		return requests.n.Load() == before
	}, 20*time.Second, 200*time.Millisecond, "a drift check at rest sends no request")

	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "empty", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cm.Labels[ssa.LabelStage] = "prod"
		_, err = cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
		return err
	}))
	require.Eventually(t, func() bool {
		drift, err := m.Drift(ctx, objs, opts)
		require.NoError(t, err)
		return len(drift) == 1 && drift[0].Object.Name == "empty" && drift[0].Action == ssa.Configured
	}, 10*time.Second, 100*time.Millisecond)
}

// TestPrune deletes an inventory in reverse apply order, keeps what is annotated
// ebb.dev/prune: disabled, what another owner took over and Namespaces ebb did not create,
// and deletes a Namespace it created.
func TestPrune(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	m, _ := newManager(t)
	objs := objects(t, ns, podinfo+`
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: podinfo}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: podinfo}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: keep-me
  annotations: {ebb.dev/prune: disabled}
---
apiVersion: v1
kind: Namespace
metadata: {name: `+ns+`-created}`)
	_, err := m.Apply(ctx, objs, ssa.ApplyOptions{Owner: owner})
	require.NoError(t, err)
	inv := ssa.InventoryOf(objs)
	require.Len(t, inv, 7)
	assert.Equal(t, "Namespace", inv[0].Kind, "apply order: namespaces first")

	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	// Someone else takes the Secret over: it is no longer this stage's to delete.
	sec, err := cs.CoreV1().Secrets(ns).Get(ctx, "creds", metav1.GetOptions{})
	require.NoError(t, err)
	sec.Labels[ssa.LabelPipeline] = "other"
	_, err = cs.CoreV1().Secrets(ns).Update(ctx, sec, metav1.UpdateOptions{})
	require.NoError(t, err)

	dry, err := m.Prune(ctx, inv, ssa.PruneOptions{Owner: owner, DryRun: true})
	require.NoError(t, err)
	assert.Len(t, dry.Deleted, 5)
	_, err = cs.CoreV1().ConfigMaps(ns).Get(ctx, "empty", metav1.GetOptions{})
	require.NoError(t, err, "a dry run deletes nothing")

	res, err := m.Prune(ctx, inv, ssa.PruneOptions{Owner: owner})
	require.NoError(t, err)
	var order []string
	for _, d := range res.Deleted {
		assert.True(t, d.Exists)
		order = append(order, d.Kind)
	}
	assert.Equal(t, []string{"PodDisruptionBudget", "Deployment", "Service", "ConfigMap", "Namespace"}, order,
		"workloads before what they use, namespaces last")
	kept := map[string]string{}
	for id, why := range res.Kept {
		kept[id.Name] = why
	}
	assert.Equal(t, map[string]string{"keep-me": "ebb.dev/prune: disabled", "creds": "no longer labelled as this stage's"}, kept)
	_, err = cs.CoreV1().ConfigMaps(ns).Get(ctx, "keep-me", metav1.GetOptions{})
	require.NoError(t, err)
	_, err = cs.AppsV1().Deployments(ns).Get(ctx, "podinfo", metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "pruned: %v", err)
	gone, err := cs.CoreV1().Namespaces().Get(ctx, ns+"-created", metav1.GetOptions{})
	if err == nil {
		assert.NotNil(t, gone.DeletionTimestamp, "the Namespace ebb created is deleted")
	}

	// A Namespace ebb found is never deleted, even when it is in the inventory.
	found := objects(t, ns, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}")
	_, err = m.Apply(ctx, found, ssa.ApplyOptions{Owner: owner})
	require.NoError(t, err)
	res, err = m.Prune(ctx, ssa.InventoryOf(found), ssa.PruneOptions{Owner: owner})
	require.NoError(t, err)
	assert.Empty(t, res.Deleted)
	assert.Equal(t, "a Namespace ebb did not create", res.Kept[ssa.InventoryOf(found)[0]])

	// A Namespace ebb created that left the release but still holds its objects stays.
	created := objects(t, ns, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"-holds}")
	_, err = m.Apply(ctx, created, ssa.ApplyOptions{Owner: owner})
	require.NoError(t, err)
	holds := objects(t, ns+"-holds", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: still-here}")
	_, err = m.Apply(ctx, holds, ssa.ApplyOptions{Owner: owner})
	require.NoError(t, err)
	res, err = m.Prune(ctx, ssa.InventoryOf(created), ssa.PruneOptions{Owner: owner, Keep: holds})
	require.NoError(t, err)
	assert.Empty(t, res.Deleted)
	assert.Equal(t, "a Namespace that holds objects of the release", res.Kept[ssa.InventoryOf(created)[0]])
	live, err := cs.CoreV1().Namespaces().Get(ctx, ns+"-holds", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Nil(t, live.DeletionTimestamp)
	_ = cs.CoreV1().Namespaces().Delete(ctx, ns+"-holds", metav1.DeleteOptions{})
}

func TestInventory(t *testing.T) {
	a := ssa.Inventory{
		{Group: "apps", Version: "v1", Kind: "Deployment", Namespace: "n", Name: "web"},
		{Version: "v1", Kind: "Service", Namespace: "n", Name: "web"},
	}
	b := ssa.Inventory{
		{Group: "apps", Version: "v1beta1", Kind: "Deployment", Namespace: "n", Name: "web"},
		{Version: "v1", Kind: "ConfigMap", Namespace: "n", Name: "cfg"},
	}
	u := a.Union(b)
	require.Len(t, u, 3, "the same object in two versions is one")
	assert.Equal(t, []string{"ConfigMap", "Service", "Deployment"}, []string{u[0].Kind, u[1].Kind, u[2].Kind}, "apply order")
	assert.Equal(t, "v1beta1", u[2].Version, "the newer entry's version wins")
	assert.Equal(t, ssa.Inventory{{Version: "v1", Kind: "Service", Namespace: "n", Name: "web"}}, a.Minus(b))
	assert.True(t, a.Has(b[0]))
	assert.Empty(t, a.Minus(a))
}
