package ssa_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/ssa"
)

// TestSettle: after a rollout, a Deployment whose status its controller filled in (a new
// resourceVersion, the same generation) is settled in sync, so the next drift check asks
// nothing; one whose spec changed after the apply (a new generation) is not, and the drift
// check finds it.
func TestSettle(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	m, requests := newManager(t)
	live, err := ssa.NewLiveCache(cluster.Config)
	require.NoError(t, err)
	t.Cleanup(live.Close)
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	objs := objects(t, ns, podinfo)
	inSync := map[string]string{}
	applied, err := m.Apply(ctx, objs, ssa.ApplyOptions{Owner: owner})
	require.NoError(t, err)
	ssa.Remember(inSync, applied)
	var d *appsv1.Deployment
	require.Eventually(t, func() bool {
		d, err = cs.AppsV1().Deployments(ns).Get(ctx, "podinfo", metav1.GetOptions{})
		return err == nil && d.Status.ObservedGeneration == d.Generation && d.Status.AvailableReplicas == 1
	}, 30*time.Second, 100*time.Millisecond, "the Deployment rolls out")

	key := ssa.MetaOf(objs[0]).Key()
	require.NotEqual(t, inSync[key], d.ResourceVersion, "the controller wrote the status since the apply")
	require.Eventually(t, func() bool {
		m.Settle(ctx, live, inSync, applied)
		return inSync[key] == d.ResourceVersion
	}, 10*time.Second, 100*time.Millisecond, "the rolled-out Deployment is settled")
	before := requests.n.Load()
	drift, err := m.Drift(ctx, objs, ssa.DriftOptions{Owner: owner, InSync: inSync, Live: live})
	require.NoError(t, err)
	assert.Empty(t, drift)
	assert.Equal(t, before, requests.n.Load(), "the first drift check after the rollout asks nothing")

	// A change of the spec after the apply is never settled.
	inSync = map[string]string{}
	applied, err = m.Apply(ctx, objs, ssa.ApplyOptions{Owner: owner})
	require.NoError(t, err)
	ssa.Remember(inSync, applied)
	_, err = cs.AppsV1().Deployments(ns).Patch(ctx, "podinfo", types.MergePatchType, []byte(`{"spec":{"minReadySeconds":7}}`), metav1.PatchOptions{FieldManager: "someone"})
	require.NoError(t, err)
	time.Sleep(time.Second) // the watch sees the change
	m.Settle(ctx, live, inSync, applied)
	drift, err = m.Drift(ctx, objs, ssa.DriftOptions{Owner: owner, InSync: inSync, Live: live})
	require.NoError(t, err)
	require.Len(t, drift, 1, "the hand edit after the apply is drift")
	assert.Equal(t, "podinfo", drift[0].Object.Name)
}
