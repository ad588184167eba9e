package realapps

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/reconciler"
)

// healthy answers every health check with 200, as a running guestbook would: the pods of the
// test clusters run nothing, so the health check `ebb new --health-url` adds is this.
func healthy(t testing.TB) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	t.Cleanup(srv.Close)
	return srv.URL + "/healthz"
}

// healthCheck is the healthCheck line `ebb new --health-url` writes.
func healthCheck(url string) string {
	return fmt.Sprintf("{url: %q, interval: 5s, successes: 3, failures: 3, timeout: 2m}", url)
}

// TestGuestbookCrashLoopRollsBack: guestbook as Argo CD's users have it (no
// progressDeadlineSeconds: Kubernetes' 600s) with the pipeline `ebb new` writes: a release
// whose pods crash-loop is rolled back by fail-fast, the comments and the Event name the pod,
// the container and CrashLoopBackOff, and prod is never touched.
func TestGuestbookCrashLoopRollsBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "failfast-guestbook", guestbook, envOptions{})
	url := healthy(t)
	e.devHealth, e.prodHealth = healthCheck(url), healthCheck(url)
	e.startDaemon()
	e.requireCompleted(e.release(guestbook.tag, "release as written"))
	ctx := context.Background()
	before, err := e.prodCS.AppsV1().Deployments(e.prodNS()).Get(ctx, "guestbook-ui", metav1.GetOptions{})
	require.NoError(t, err)

	bad := e.release("v5-broken", "a release whose pods crash-loop")
	x := e.waitDone(bad, 3*time.Minute)
	require.Equal(t, reconciler.RollbackCompleted, x.Status.Phase, "%s; all: %s", describe(x), e.describeAll())
	rb, err := e.store.GetExecution(ctx, x.Status.Rollback)
	require.NoError(t, err)
	for _, comment := range []string{x.Status.Comment, rb.Status.Comment} {
		assert.Contains(t, comment, `stage dev, task "Verify deployment" failed at commit `+short(bad)+": pods: Deployment "+e.devNS()+"/guestbook-ui: pod guestbook-ui-")
		assert.Contains(t, comment, "container guestbook-ui CrashLoopBackOff: back-off restarting failed container")
	}
	assert.Equal(t, e.imageOf(guestbook.tag), image(t, e.devCS, e.devNS(), "guestbook-ui"), "dev's image after the rollback")

	events, err := e.devCS.CoreV1().Events(e.devNS()).List(ctx, metav1.ListOptions{FieldSelector: "reason=ReleaseFailed,involvedObject.name=guestbook-ui"})
	require.NoError(t, err)
	require.NotEmpty(t, events.Items, "no ReleaseFailed Event on the Deployment")
	assert.Contains(t, events.Items[0].Message, "container guestbook-ui CrashLoopBackOff")

	after, err := e.prodCS.AppsV1().Deployments(e.prodNS()).Get(ctx, "guestbook-ui", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, before.ResourceVersion, after.ResourceVersion, "prod's Deployment was written to")
}

// BenchmarkCrashLoopToRollback measures, for guestbook with the pipeline `ebb new` writes (a
// health check on each stage, nothing tuned; guestbook's manifests as written, so Kubernetes'
// 600s progress deadline), the time from the commit of a release whose pods crash-loop to its
// execution's ROLLBACK_COMPLETED, and the share of it spent detecting the failure (commit to
// ROLLING_BACK). The daemon sees commits through its repository watch (a webhook's part).
//
// go test ./internal/realapps -bench BenchmarkCrashLoopToRollback -benchtime 5x -run '^$'
func BenchmarkCrashLoopToRollback(b *testing.B) {
	e := newEnv(b, "bench-crashloop", guestbook, envOptions{})
	url := healthy(b)
	e.devHealth, e.prodHealth = healthCheck(url), healthCheck(url)
	e.startDaemon("--log-level", "info")
	e.requireCompleted(e.release(guestbook.tag, "release as written"))
	var total, detect []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		bad := e.release(fmt.Sprintf("v5-broken-%d", i), "a release whose pods crash-loop")
		e.waitFor(bad, 3*time.Minute, "roll back", func(x *reconciler.Execution) bool {
			return x.Status.Phase == reconciler.RollingBack || x.Status.Phase.Terminal()
		})
		detected := time.Since(start)
		x := e.waitDone(bad, 3*time.Minute)
		done := time.Since(start)
		require.Equal(b, reconciler.RollbackCompleted, x.Status.Phase, "%s", describe(x))
		require.True(b, strings.Contains(x.Status.Comment, "CrashLoopBackOff"), "%s", x.Status.Comment)
		total, detect = append(total, done), append(detect, detected)
	}
	b.StopTimer()
	p50 := func(d []time.Duration) time.Duration {
		s := append([]time.Duration(nil), d...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	b.ReportMetric(p50(total).Seconds(), "s-commit-to-rollback-completed-p50")
	b.ReportMetric(p50(detect).Seconds(), "s-commit-to-detected-p50")
	b.ReportMetric(100*p50(detect).Seconds()/p50(total).Seconds(), "%-detecting")
	b.Logf("commit to ROLLBACK_COMPLETED: %v; commit to ROLLING_BACK: %v", total, detect)
}
