package realapps

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"ebb.dev/ebb/reconciler"
)

// TestPruneDroppedObject: a release whose manifests no longer have an object deletes it from
// every stage, whatever its kind: podinfo without its HorizontalPodAutoscaler, sock-shop
// without its Ingress.
func TestPruneDroppedObject(t *testing.T) {
	cases := []struct {
		name     string
		app      app
		resource string // the line of the kustomization dropped
		kind     schema.GroupVersionResource
		object   string
	}{
		{"podinfo-hpa", podinfo, "  - hpa.yaml\n", autoscalers, "podinfo"},
		{"sock-shop-ingress", sockShop, "  - base/front-end-ingress.yaml\n", ingresses, "front-end-ingress"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, "prune-"+tc.name, tc.app, envOptions{})
			e.startDaemon()
			e.requireCompleted(e.release(tc.app.tag, "release as written"))
			require.True(t, exists(t, e.devDyn, tc.kind, e.devNS(), tc.object), "%s %s was not deployed to dev", tc.kind.Resource, tc.object)
			require.True(t, exists(t, e.prodDy, tc.kind, e.prodNS(), tc.object), "%s %s was not deployed to prod", tc.kind.Resource, tc.object)

			e.editAppFile("kustomization.yaml", tc.resource, "")
			e.requireCompleted(e.release(tc.app.tag, "drop "+tc.object))
			assert.False(t, exists(t, e.devDyn, tc.kind, e.devNS(), tc.object), "%s %s dropped from Git is still in dev", tc.kind.Resource, tc.object)
			assert.False(t, exists(t, e.prodDy, tc.kind, e.prodNS(), tc.object), "%s %s dropped from Git is still in prod", tc.kind.Resource, tc.object)
		})
	}
}

// TestRollbackLeavesNothingOfTheFailedRelease: podinfo's next release adds a ConfigMap and a
// PodDisruptionBudget and a crash-looping image; its rollout exceeds podinfo's own progress
// deadline (60s) in dev, and the rollback returns dev to exactly the known-good release: the
// good image, and neither the ConfigMap nor the PodDisruptionBudget. Prod never saw it.
func TestRollbackLeavesNothingOfTheFailedRelease(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "rollback-podinfo", podinfo, envOptions{})
	e.startDaemon()
	e.requireCompleted(e.release(podinfo.tag, "release as written"))

	e.writeAppFile("configmap.yaml", `apiVersion: v1
kind: ConfigMap
metadata:
  name: podinfo-ui
data:
  PODINFO_UI_MESSAGE: release 6.14.2
`)
	e.writeAppFile("pdb.yaml", `apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: podinfo
spec:
  minAvailable: 1
  selector:
    matchLabels:
      app: podinfo
`)
	e.editAppFile("kustomization.yaml", "  - service.yaml\n", "  - service.yaml\n  - configmap.yaml\n  - pdb.yaml\n")
	bad := e.release("6.14.2-broken", "release 6.14.2 with a ConfigMap and a PodDisruptionBudget")
	x := e.waitDone(bad, 4*time.Minute)
	require.Equal(t, reconciler.RollbackCompleted, x.Status.Phase, "%s; all: %s", describe(x), e.describeAll())

	assert.Equal(t, e.imageOf(podinfo.tag), image(t, e.devCS, e.devNS(), "podinfo"), "dev's image after the rollback")
	assert.False(t, exists(t, e.devDyn, configMaps, e.devNS(), "podinfo-ui"), "the failed release's ConfigMap is left in dev")
	assert.False(t, exists(t, e.devDyn, disruptions, e.devNS(), "podinfo"), "the failed release's PodDisruptionBudget is left in dev")
	assert.True(t, exists(t, e.devDyn, autoscalers, e.devNS(), "podinfo"), "the known-good release's HPA is gone from dev")
	assert.Equal(t, e.imageOf(podinfo.tag), image(t, e.prodCS, e.prodNS(), "podinfo"), "prod never starts when dev failed")
	assert.False(t, exists(t, e.prodDy, configMaps, e.prodNS(), "podinfo-ui"), "prod got the failed release's ConfigMap")
	assert.False(t, exists(t, e.prodDy, disruptions, e.prodNS(), "podinfo"), "prod got the failed release's PodDisruptionBudget")
}

// TestPruneDisabledSurvives: of two ConfigMaps a release drops, the one annotated
// `ebb.dev/prune: disabled` stays in every stage; the other is pruned.
func TestPruneDisabledSurvives(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "prune-disabled", guestbook, envOptions{})
	e.writeAppFile("notes-configmap.yaml", `apiVersion: v1
kind: ConfigMap
metadata:
  name: guestbook-notes
  annotations:
    ebb.dev/prune: disabled
data:
  note: kept when dropped from Git
`)
	e.writeAppFile("scratch-configmap.yaml", `apiVersion: v1
kind: ConfigMap
metadata:
  name: guestbook-scratch
data:
  note: pruned when dropped from Git
`)
	e.startDaemon()
	e.requireCompleted(e.release(guestbook.tag, "release with two ConfigMaps"))
	for _, name := range []string{"guestbook-notes", "guestbook-scratch"} {
		require.True(t, exists(t, e.devDyn, configMaps, e.devNS(), name), "%s was not deployed to dev", name)
		require.True(t, exists(t, e.prodDy, configMaps, e.prodNS(), name), "%s was not deployed to prod", name)
	}

	e.removeAppFile("notes-configmap.yaml")
	e.removeAppFile("scratch-configmap.yaml")
	e.requireCompleted(e.release(guestbook.tag, "drop both ConfigMaps"))
	assert.True(t, exists(t, e.devDyn, configMaps, e.devNS(), "guestbook-notes"), "the ConfigMap with ebb.dev/prune: disabled was pruned from dev")
	assert.True(t, exists(t, e.prodDy, configMaps, e.prodNS(), "guestbook-notes"), "the ConfigMap with ebb.dev/prune: disabled was pruned from prod")
	assert.False(t, exists(t, e.devDyn, configMaps, e.devNS(), "guestbook-scratch"), "the dropped ConfigMap is still in dev")
	assert.False(t, exists(t, e.prodDy, configMaps, e.prodNS(), "guestbook-scratch"), "the dropped ConfigMap is still in prod")
}
