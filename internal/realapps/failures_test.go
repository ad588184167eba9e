package realapps

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"

	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

// TestBlueGreenWithoutServiceStalls: a blue-green pipeline whose manifests have no Service
// (guestbook's Deployment alone) is wrong, not unlucky. Its execution ends FAILED once, as
// Stalled and not retryable, and no further execution appears over several resyncs, though a
// retry back-off of 1s passes many times meanwhile.
func TestBlueGreenWithoutServiceStalls(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "stall-bluegreen", guestbook, envOptions{})
	e.removeAppFile("guestbook-ui-svc.yaml")
	e.model = "blue-green"
	e.startDaemon("--retry-backoff", "1s")
	sha := e.release(guestbook.tag, "guestbook's Deployment alone, blue-green")

	x := e.waitDone(sha, 2*time.Minute)
	assert.Equal(t, reconciler.Failed, x.Status.Phase, describe(x))
	assert.Equal(t, reconciler.FailureStalled, x.Status.Failure, "status.failure of %s", describe(x))
	assert.Contains(t, x.Status.Comment, "Service")
	assert.Contains(t, x.Status.Comment, "pipelines/"+e.name+".yaml", "the comment names the pipeline's file")

	time.Sleep(5 * resync)
	assert.Equal(t, 1, len(e.executions()), "the stalled release ran again: %s", e.describeAll())

	// Its Pipeline object says so, where kubectl, kstatus and Argo CD or Flux health checks look.
	var stalled *metav1.Condition
	require.Eventually(t, func() bool {
		list, err := e.store.ListPipelines(context.Background())
		if err != nil {
			return false
		}
		for _, p := range list {
			if p.Spec.Pipeline == e.name || p.Name == e.name {
				stalled = apimeta.FindStatusCondition(p.Status.Conditions, "Stalled")
			}
		}
		return stalled != nil && stalled.Status == metav1.ConditionTrue
	}, 30*time.Second, 100*time.Millisecond, "the Pipeline object is not Stalled: %+v", stalled)
	assert.Contains(t, stalled.Message, "pipelines/"+e.name+".yaml")
	assert.Contains(t, stalled.Message, "Service")
}

// TestAPIServerOutageDuringVerification kills the API server of the dev stage's cluster while
// the dev stage verifies a release (a health check served here, 20 probes 200ms apart), and
// keeps it down until the health check has passed and ebb needed the cluster again. The
// records live in another cluster ("dev", the home), which stays up. The outage is no reason
// to roll back: once the API server is back, the same execution goes on and completes.
func TestAPIServerOutageDuringVerification(t *testing.T) {
	t.Parallel()
	target := testcluster.StartT(t, testcluster.Options{Name: "target"})
	var armed atomic.Bool
	var probes atomic.Int64
	var lastProbe atomic.Int64 // unix nanoseconds of the 20th probe
	started := make(chan struct{})
	var once sync.Once
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if armed.Load() {
			once.Do(func() { close(started) })
			if probes.Add(1) == 20 {
				lastProbe.Store(time.Now().UnixNano())
			}
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(health.Close)

	e := newEnv(t, "outage", guestbook, envOptions{devCluster: target})
	e.devHealth = fmt.Sprintf("{url: %q, interval: 200ms, successes: 20, failures: 3, timeout: 2m}", health.URL)
	e.startDaemon("--retry-backoff", "1s")
	e.requireCompleted(e.release(guestbook.tag, "release v5 as written"))

	armed.Store(true)
	sha := e.release("v6", "release v6")
	select {
	case <-started:
	case <-time.After(2 * time.Minute):
		t.Fatalf("the dev stage's health check never started: %s", e.describeAll())
	}
	require.NoError(t, target.StopAPIServer())
	e.waitFor(sha, 2*time.Minute, "pass its health check and need the cluster again", func(x *reconciler.Execution) bool {
		at := lastProbe.Load()
		return x.Status.Phase != reconciler.Running || (at != 0 && time.Since(time.Unix(0, at)) > 5*time.Second)
	})
	t.Logf("during the outage: %s", e.describeAll())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, target.StartAPIServer(ctx))

	x := e.waitDone(sha, 3*time.Minute)
	assert.Empty(t, e.rollbacks(), "an outage of the cluster started a rollback")
	assert.Equal(t, reconciler.Completed, x.Status.Phase, "%s; all: %s", describe(x), e.describeAll())
	assert.Equal(t, 1, len(e.deploys(sha)), "executions of the release: %s", e.describeAll())
	assert.Equal(t, e.imageOf("v6"), image(t, e.devCS, e.devNS(), guestbook.service), "dev's image")
	assert.Equal(t, e.imageOf("v6"), image(t, e.prodCS, e.prodNS(), guestbook.service), "prod's image")
}

// TestForbiddenWaits deploys with an identity whose rights are cut after the first release.
// First it may no longer list ConfigMaps: ebb never needs to (it prunes by inventory, not by
// listing kinds), so the next release completes, its Deployment updated once, not flapped.
// Then it may no longer patch Services, which applying the release needs: the next release's
// one execution is WAITING, as a failure of the cluster, saying what is forbidden, and tries
// again with a growing back-off, never rolling back and never touching the Deployment. Once the
// right is back, that execution completes.
func TestForbiddenWaits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const user = "realapps-deployer"
	admin := kubernetes.NewForConfigOrDie(dev.Config)
	lists := grant(t, admin, user, "list-configmaps", rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"list"}})
	patches := grant(t, admin, user, "patch-services", rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"patch"}})
	grant(t, admin, user, "deploy", deployerRules()...)
	cfg, err := dev.UserConfig(user)
	require.NoError(t, err)
	kubeconfig := filepath.Join(t.TempDir(), "deployer.kubeconfig")
	require.NoError(t, testcluster.WriteKubeconfig(kubeconfig, "dev", cfg))

	e := newEnv(t, "forbidden", guestbook, envOptions{devKubeconfig: kubeconfig})
	d := e.startDaemon("--retry-backoff", "1s")
	e.requireCompleted(e.release(guestbook.tag, "release v5 as written"))
	settle(t, e.devCS, e.devNS())
	generation := func() int64 {
		dep, err := e.devCS.AppsV1().Deployments(e.devNS()).Get(ctx, guestbook.service, metav1.GetOptions{})
		require.NoError(t, err)
		return dep.Generation
	}
	as := kubernetes.NewForConfigOrDie(cfg)

	// The identity may no longer list ConfigMaps: nothing ebb does needs it.
	require.NoError(t, admin.RbacV1().ClusterRoleBindings().Delete(ctx, lists, metav1.DeleteOptions{}))
	require.Eventually(t, func() bool {
		_, err := as.CoreV1().ConfigMaps(e.devNS()).List(ctx, metav1.ListOptions{})
		return apierrors.IsForbidden(err)
	}, 30*time.Second, 50*time.Millisecond, "the identity may still list ConfigMaps")
	good := generation()
	e.requireCompleted(e.release("v6", "release v6"))
	settle(t, e.devCS, e.devNS())
	assert.Equal(t, good+1, generation(), "the Deployment is updated once for the new image, not flapped")
	assert.Empty(t, e.rollbacks(), "a forbidden list started a rollback")

	// The identity may no longer patch Services, which applying a release needs.
	require.NoError(t, admin.RbacV1().ClusterRoleBindings().Delete(ctx, patches, metav1.DeleteOptions{}))
	require.Eventually(t, func() bool {
		_, err := as.CoreV1().Services(e.devNS()).Patch(ctx, guestbook.service, types.MergePatchType, []byte(`{}`), metav1.PatchOptions{})
		return apierrors.IsForbidden(err)
	}, 30*time.Second, 50*time.Millisecond, "the identity may still patch Services")
	good = generation()
	sha := e.release("v7", "release v7")
	highest := good
	patches0 := sum(scrape(t, d.port), "ebb_kube_requests_total", `cluster="dev"`, `resource="services"`, `verb="PATCH"`)
	var attempts []time.Time
	last := patches0
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		highest = max(highest, generation())
		if n := sum(scrape(t, d.port), "ebb_kube_requests_total", `cluster="dev"`, `resource="services"`, `verb="PATCH"`); n > last {
			last = n
			attempts = append(attempts, time.Now())
		}
	}

	assert.Empty(t, e.rollbacks(), "a forbidden patch started a rollback")
	assert.Equal(t, good, highest, "the Deployment was changed while its Service could not be applied")
	list := e.deploys(sha)
	require.NotEmpty(t, list, "no execution of the release: %s", e.describeAll())
	assert.Equal(t, 1, len(list), "one execution per attempt: %s", e.describeAll())
	x := &list[len(list)-1]
	assert.Equal(t, reconciler.Waiting, x.Status.Phase, describe(x))
	assert.Equal(t, reconciler.FailureWaiting, x.Status.Failure, "status.failure of %s", describe(x))
	comment := strings.ToLower(x.Status.Comment)
	for _, word := range []string{"forbidden", "patch", "services"} {
		assert.Contains(t, comment, word, "the comment does not say what is forbidden")
	}
	tries := distinct(attempts, 500*time.Millisecond)
	t.Logf("Service patches: %.0f in 20s, in %d bursts at %s", last-patches0, len(tries), offsets(tries))
	if assert.GreaterOrEqual(t, len(tries), 3, "the forbidden patch was not tried again") {
		first, final := tries[1].Sub(tries[0]), tries[len(tries)-1].Sub(tries[len(tries)-2])
		assert.Greater(t, final, 2*first, "the back-off does not grow: tries at %s", offsets(tries))
	}

	// The right is back: the same execution goes on and completes.
	grant(t, admin, user, "patch-services-again", rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"patch"}})
	x = e.waitDone(sha, 2*time.Minute)
	assert.Equal(t, reconciler.Completed, x.Status.Phase, describe(x))
	assert.Equal(t, 1, len(e.deploys(sha)), "executions of the release: %s", e.describeAll())
}

// grant gives user a ClusterRole of rules, bound cluster-wide, both named realapps-<name>, and
// returns the binding's name. The test's cleanup deletes both.
func grant(t *testing.T, cs kubernetes.Interface, user, name string, rules ...rbacv1.PolicyRule) string {
	t.Helper()
	ctx := context.Background()
	name = "realapps-" + name
	_, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = cs.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{})
		_ = cs.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{})
	})
	return name
}

// deployerRules allow everything a release of the apps needs, in every namespace, except
// listing ConfigMaps and patching Services (granted apart, so a test can take them away):
// RBAC only adds, so each resource is named.
func deployerRules() []rbacv1.PolicyRule {
	all := []string{"*"}
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"namespaces", "secrets", "serviceaccounts", "pods", "endpoints", "events", "persistentvolumeclaims"}, Verbs: all},
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "list", "watch", "create", "update", "delete"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "watch", "create", "update", "patch", "delete"}},
		{APIGroups: []string{"apps", "autoscaling", "policy", "networking.k8s.io", "discovery.k8s.io", "events.k8s.io"}, Resources: all, Verbs: all},
	}
}

// TestUnreachableClusterWaits points the dev stage at a port nobody listens on for about 30s,
// with a retry back-off of 1s. The release is tried again and again, but in its one
// execution, WAITING as a failure of the cluster: not one record per attempt. When the port
// then answers (forwarded to dev's API server), that execution completes.
func TestUnreachableClusterWaits(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	cfg := rest.CopyConfig(dev.Config)
	cfg.Host = "https://127.0.0.1:" + strconv.Itoa(port)
	kubeconfig := filepath.Join(t.TempDir(), "unreachable.kubeconfig")
	require.NoError(t, testcluster.WriteKubeconfig(kubeconfig, "dev", cfg))

	e := newEnv(t, "unreachable", guestbook, envOptions{devKubeconfig: kubeconfig})
	d := e.startDaemon("--retry-backoff", "1s")
	sha := e.release(guestbook.tag, "release v5 as written")
	var attempts []time.Time
	last := 0.0
	records := 0
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if n := sum(scrape(t, d.port), "ebb_kube_requests_total", `cluster="dev"`); n > last {
			last = n
			attempts = append(attempts, time.Now())
		}
		records = max(records, len(e.deploys(sha)))
	}

	list := e.deploys(sha)
	require.NotEmpty(t, list, "no execution of the release: %s", e.describeAll())
	assert.Equal(t, 1, records, "one execution per attempt: %s", e.describeAll())
	x := &list[len(list)-1]
	assert.Equal(t, reconciler.Waiting, x.Status.Phase, describe(x))
	assert.Equal(t, reconciler.FailureWaiting, x.Status.Failure, "status.failure of %s", describe(x))
	assert.True(t, strings.Contains(x.Status.Comment, strconv.Itoa(port)) || strings.Contains(x.Status.Comment, "refused"),
		"the comment does not say what failed: %q", x.Status.Comment)
	tries := distinct(attempts, 500*time.Millisecond)
	t.Logf("requests to the unreachable cluster: %.0f, in %d bursts at %s", last, len(tries), offsets(tries))
	assert.GreaterOrEqual(t, len(tries), 2, "the unreachable cluster was not tried again")
	assert.Empty(t, e.rollbacks())

	// The cluster answers.
	forward(t, port, strings.TrimPrefix(dev.Config.Host, "https://"))
	x = e.waitDone(sha, 3*time.Minute)
	assert.Equal(t, reconciler.Completed, x.Status.Phase, "%s; all: %s", describe(x), e.describeAll())
	assert.Equal(t, 1, len(e.deploys(sha)), "executions of the release: %s", e.describeAll())
	assert.Equal(t, e.imageOf(guestbook.tag), image(t, e.prodCS, e.prodNS(), guestbook.service), "prod's image")
}

// forward serves 127.0.0.1:port by forwarding every connection to addr, until the test ends.
func forward(t *testing.T, port int, addr string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", addr)
			if err != nil {
				in.Close()
				continue
			}
			track(in)
			track(out)
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// distinct keeps the first of each run of times closer than gap to the one before: one per
// burst of requests.
func distinct(times []time.Time, gap time.Duration) []time.Time {
	var out []time.Time
	for i, at := range times {
		if i == 0 || at.Sub(times[i-1]) > gap {
			out = append(out, at)
		}
	}
	return out
}

// offsets writes times as offsets from the first, for messages.
func offsets(times []time.Time) string {
	var out []string
	for _, at := range times {
		out = append(out, at.Sub(times[0]).Round(100*time.Millisecond).String())
	}
	return "[" + strings.Join(out, " ") + "]"
}

// TestHomeAPIServerOutageDuringVerification kills the API server of the home cluster, where
// the records and the leader Lease live, while the dev stage verifies a release, keeps it down
// until the verification is over (so its outcome cannot be recorded), starts it again, pushes
// the next release at once, and then kills and restarts the daemon. Whether the daemon waited
// to record the outcome or lost its Lease and resumed after the restart, the records end true:
// one execution of each release, no rollback, both ledgers on the newest release (never
// overwritten by the older execution); and drift is corrected afterwards.
func TestHomeAPIServerOutageDuringVerification(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	home := testcluster.StartT(t, testcluster.Options{Name: "home"})
	root, err := testcluster.ModuleRoot()
	require.NoError(t, err)
	require.NoError(t, reconciler.InstallCRDs(ctx, dynamic.NewForConfigOrDie(home.Config), filepath.Join(root, "charts", "ebb", "crds")))
	var armed atomic.Bool
	var probes atomic.Int64
	started, passed := make(chan struct{}), make(chan struct{})
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if armed.Load() {
			switch probes.Add(1) {
			case 1:
				close(started)
			case 10:
				close(passed)
			}
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(health.Close)

	e := newEnv(t, "homeout", guestbook, envOptions{home: home})
	e.devHealth = fmt.Sprintf("{url: %q, interval: 200ms, successes: 10, failures: 3, timeout: 2m}", health.URL)
	d := e.startDaemon("--retry-backoff", "1s")
	e.requireCompleted(e.release(guestbook.tag, "release v5 as written"))

	armed.Store(true)
	sha := e.release("v6", "release v6")
	select {
	case <-started:
	case <-time.After(2 * time.Minute):
		t.Fatalf("the dev stage's health check never started: %s", e.describeAll())
	}
	require.NoError(t, home.StopAPIServer())
	select {
	case <-passed:
	case <-time.After(time.Minute):
		t.Fatal("the health check did not pass during the outage")
	}
	// The outcome cannot be recorded for a few seconds: fewer than the Lease's 10s renewal
	// deadline, so the daemon keeps leading.
	time.Sleep(3 * time.Second)
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	require.NoError(t, home.StartAPIServer(startCtx))
	// The next commit arrives as soon as the home answers again.
	armed.Store(false)
	next := e.release("v7", "release v7")
	e.waitFor(next, time.Minute, "complete before the restart (unless the daemon lost its Lease)", func(x *reconciler.Execution) bool {
		return x.Status.Phase.Terminal()
	})
	d.Kill()
	e.startDaemon("--retry-backoff", "1s")

	x := e.waitDone(next, 3*time.Minute)
	assert.Equal(t, reconciler.Completed, x.Status.Phase, "%s; all: %s", describe(x), e.describeAll())
	e.waitFor(sha, time.Minute, "end", func(x *reconciler.Execution) bool { return x.Status.Phase.Terminal() })
	assert.Equal(t, 1, len(e.deploys(sha)), "executions of release v6: %s", e.describeAll())
	assert.Equal(t, 1, len(e.deploys(next)), "executions of release v7: %s", e.describeAll())
	assert.Empty(t, e.rollbacks(), "an outage of the home cluster started a rollback")
	// The ledgers follow what runs: v7, whatever became of v6's execution.
	for _, stage := range []string{"dev", "prod"} {
		ledger, err := e.store.Ledger(ctx, e.name, stage)
		require.NoError(t, err)
		require.NotNil(t, ledger.Status.Current, stage)
		assert.Equal(t, next, ledger.Status.Current.Commit, "the %s ledger's current release", stage)
		require.NotNil(t, ledger.Status.LastKnownGood, stage)
		assert.Equal(t, next, ledger.Status.LastKnownGood.Commit, "the %s ledger's known-good release", stage)
	}
	assert.Equal(t, e.imageOf("v7"), image(t, e.devCS, e.devNS(), guestbook.service), "dev's image")
	time.Sleep(3 * resync) // the resumed daemon's resyncs do not undo it
	assert.Equal(t, e.imageOf("v7"), image(t, e.devCS, e.devNS(), guestbook.service), "dev's image")
	for _, stage := range []string{"dev", "prod"} {
		ledger, err := e.store.Ledger(ctx, e.name, stage)
		require.NoError(t, err)
		assert.Equal(t, next, ledger.Status.Current.Commit, "the %s ledger's current release", stage)
	}

	// The pipeline is still reconciled: a hand edit is restored.
	deployments := e.devCS.AppsV1().Deployments(e.devNS())
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		dep, err := deployments.Get(ctx, guestbook.service, metav1.GetOptions{})
		if err != nil {
			return err
		}
		dep.Spec.Template.Spec.Containers[0].Image = guestbook.image + ":by-hand"
		_, err = deployments.Update(ctx, dep, metav1.UpdateOptions{})
		return err
	}))
	assert.Eventually(t, func() bool {
		return image(t, e.devCS, e.devNS(), guestbook.service) == e.imageOf("v7")
	}, 30*resync, 100*time.Millisecond, "the image changed by hand was not restored")
}
