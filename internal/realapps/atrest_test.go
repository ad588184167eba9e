package realapps

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAtRestNothingDrifts deploys each app as written through dev and prod, over smart HTTP
// with basic auth, then watches three drift checks: none may report drift or write anything.
// podinfo is the hard case: its `cpu: 2000m` is stored as "2", and its HPA owns the
// Deployment's replicas. "guestbook-empty-configmap" adds a ConfigMap with `data: {}`, which
// the API server stores without data.
func TestAtRestNothingDrifts(t *testing.T) {
	cases := []struct {
		name  string
		app   app
		extra map[string]string // files added to the app, for the release
	}{
		{name: "guestbook", app: guestbook},
		{name: "kustomize-guestbook", app: kustomizeGuestbook},
		{name: "sock-shop", app: sockShop},
		{name: "podinfo", app: podinfo},
		{name: "guestbook-empty-configmap", app: guestbook, extra: map[string]string{
			"empty-configmap.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: guestbook-empty\ndata: {}\n",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, "rest-"+tc.name, tc.app, envOptions{server: true})
			for path, content := range tc.extra {
				e.writeAppFile(path, content)
			}
			d := e.startDaemon()
			e.requireCompleted(e.release(tc.app.tag, "release "+tc.app.tag+" as written"))
			assertAtRest(t, e, d)
		})
	}
}

// assertAtRest waits for the controllers to settle the stages' objects, then watches three
// drift checks: no drift counted (ebb_drift_total absent or zero), no DriftRestored Event, no
// object written (same resourceVersions), no new execution.
func assertAtRest(t *testing.T, e *env, d *daemon) {
	t.Helper()
	settle(t, e.devCS, e.devNS())
	settle(t, e.prodCS, e.prodNS())
	// One drift check of each stage after the controllers settled: it compares what changed
	// since the apply (the status the controllers wrote) and finds it in sync.
	checked := func(m map[string]float64, stage string) float64 {
		return sum(m, "ebb_drift_checks_total", `pipeline="`+e.name+`"`, `stage="`+stage+`"`, `result="in-sync"`)
	}
	settled := scrape(t, d.port)
	require.Eventually(t, func() bool {
		m := scrape(t, d.port)
		return checked(m, "dev") > checked(settled, "dev") && checked(m, "prod") > checked(settled, "prod")
	}, 10*resync, 100*time.Millisecond, "no drift check found the stages in sync")
	devBefore, prodBefore := liveObjects(t, e.devDyn, e.devNS(), e.name), liveObjects(t, e.prodDy, e.prodNS(), e.name)
	requestsBefore := scrape(t, d.port)
	executions := len(e.executions())

	time.Sleep(3*resync + resync/2) // three drift checks

	m := scrape(t, d.port)
	// The checks ran, found both stages in sync, and (the objects being unchanged since they
	// were last found in sync) sent no request to either stage's cluster.
	for _, stage := range []string{"dev", "prod"} {
		checks := sum(m, "ebb_drift_checks_total", `pipeline="`+e.name+`"`, `stage="`+stage+`"`, `result="in-sync"`) -
			sum(requestsBefore, "ebb_drift_checks_total", `pipeline="`+e.name+`"`, `stage="`+stage+`"`, `result="in-sync"`)
		assert.GreaterOrEqual(t, checks, 3.0, "in-sync drift checks of stage %s during three resyncs", stage)
		assert.Zero(t, sum(m, "ebb_drift_checks_total", `pipeline="`+e.name+`"`, `stage="`+stage+`"`, `result="error"`), "drift checks that failed")
	}
	// No request to either stage's cluster (only the home's Lease, by design, is left out).
	_, _, by := requests(requestsBefore, m)
	for series, n := range by {
		assert.NotContains(t, series, `cluster="dev"`, "%g requests at rest: %s", n, series)
		assert.NotContains(t, series, `cluster="prod"`, "%g requests at rest: %s", n, series)
	}
	assert.Zero(t, sum(m, "ebb_drift_total", `pipeline="`+e.name+`"`), "drift reported at rest: %v", series(m, "ebb_drift_total", `pipeline="`+e.name+`"`))
	assert.Empty(t, driftEvents(t, e.devCS, e.devNS()), "DriftRestored Events in dev")
	assert.Empty(t, driftEvents(t, e.prodCS, e.prodNS()), "DriftRestored Events in prod")
	assert.Empty(t, unchanged(devBefore, liveObjects(t, e.devDyn, e.devNS(), e.name)), "objects written at rest in dev")
	assert.Empty(t, unchanged(prodBefore, liveObjects(t, e.prodDy, e.prodNS(), e.name)), "objects written at rest in prod")
	assert.Equal(t, executions, len(e.executions()), "executions at rest: %s", e.describeAll())
	assert.NotEmpty(t, devBefore, "no objects of the pipeline in dev")
}
