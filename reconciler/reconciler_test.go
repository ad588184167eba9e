package reconciler

import (
	"cmp"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/planner"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(testcluster.Main(m, testcluster.Options{Name: "reconciler"}, &cluster))
}

// fixture is one reconciler over the test cluster, with targets rendered by hand: commit SHA
// -> target, standing in for the planner.
type fixture struct {
	t       testing.TB
	r       *Reconciler
	cs      kubernetes.Interface
	ns      string // the stage's namespace
	records string
	targets map[string]*Target
	stage   *planner.Stage
	runCtx  context.Context
	// stop shuts the reconciler down, as a daemon that stops.
	stop func()
	// badHash is the hash of the release a benchmark expects to fail.
	badHash string
	// deadline is the Deployment's progressDeadlineSeconds; default 2.
	deadline int
	// podSpec is added to the pod template's spec (a YAML flow mapping's entries), and extra
	// to the release (YAML list items).
	podSpec, extra string
}

func newFixture(t testing.TB, rollback bool) *fixture {
	t.Helper()
	return newFixtureOn(t, rollback, cluster.Config)
}

// newFixtureOn is newFixture whose clients, of the records and of the stage's cluster, are
// built from cfg.
func newFixtureOn(t testing.TB, rollback bool, cfg *rest.Config) *fixture {
	t.Helper()
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(cfg)
	cs := kubernetes.NewForConfigOrDie(cfg)
	top, err := testcluster.ModuleRoot()
	require.NoError(t, err)
	require.NoError(t, InstallCRDs(ctx, dyn, filepath.Join(top, "charts", "ebb", "crds")))

	records, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	target, err := NewCluster("dev", cfg)
	require.NoError(t, err)
	t.Cleanup(target.Close)

	f := &fixture{
		t: t, cs: cs, ns: "app-" + records.Name, records: records.Name, targets: map[string]*Target{},
		stage: &planner.Stage{Name: "dev", Cluster: "dev", Namespace: "app-" + records.Name, Model: planner.ModelRolling, Rollback: rollback, SelfHeal: true,
			Verify: planner.Verify{Rollout: planner.RolloutCheck{Timeout: planner.Duration{Duration: 30 * time.Second}}, Pods: defaultPods()}},
	}
	f.r = New(Options{
		Namespace: records.Name, Records: dyn, Events: cs,
		Clusters: StaticClusters(map[string]*Cluster{"dev": target}),
		Render: func(ctx context.Context, commit, pipeline string) (*Target, error) {
			if t := f.targets[commit]; t != nil {
				return t, nil
			}
			return nil, fmt.Errorf("no commit %s", commit)
		},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	runCtx, cancel := context.WithCancel(ctx)
	require.NoError(t, f.r.Resume(runCtx))
	f.stop = func() { cancel(); f.r.Wait() }
	t.Cleanup(f.stop)
	f.runCtx = runCtx
	return f
}

// defaultPods is verify.pods as a pipeline gets it when it does not say.
func defaultPods() planner.PodsCheck {
	var p planner.PodsCheck
	p.SetDefaults()
	return p
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// commit makes a target for the web app with image tag, as the planner would render it.
func (f *fixture) commit(sha, message, tag string) *Target {
	f.t.Helper()
	manifest := fmt.Sprintf(`
- apiVersion: v1
  kind: Namespace
  metadata: {name: %[1]s}
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: %[1]s}
  spec:
    selector: {app: web}
    ports: [{port: 80, targetPort: 8080}]
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web, namespace: %[1]s}
  spec:
    replicas: 3
    progressDeadlineSeconds: %[3]d
    selector: {matchLabels: {app: web}}
    template:
      metadata: {labels: {app: web}}
      spec: {%[4]s containers: [{name: web, image: "registry.example/web:%[2]s"}]}
%[5]s`, f.ns, tag, cmp.Or(f.deadline, 2), f.podSpec, f.extra)
	var raw []map[string]any
	require.NoError(f.t, yaml.Unmarshal([]byte(manifest), &raw))
	objs := make([]*unstructured.Unstructured, len(raw))
	for i := range raw {
		objs[i] = &unstructured.Unstructured{Object: raw[i]}
	}
	kept, err := planner.ObjectsOf(objs)
	require.NoError(f.t, err)
	t := &Target{
		Pipeline: &planner.Pipeline{Metadata: planner.Metadata{Name: "web"}, Spec: planner.PipelineSpec{Service: "web", Input: planner.Input{Image: "registry.example/web"}}},
		Commit:   Commit{SHA: sha, Message: message},
		Stages: []Desired{{
			Stage: f.stage, Hash: fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(tag))), Namespace: f.ns, Deployment: "web", Service: "web",
			Images: []string{"registry.example/web:" + tag}, Objects: kept,
		}},
	}
	f.targets[sha] = t
	return t
}

func (f *fixture) sync(t *Target) {
	f.r.Sync(f.runCtx, []*Target{t})
}

// waitFor waits until the execution with display name reaches status.
func (f *fixture) waitFor(display string, status Status) *Execution {
	f.t.Helper()
	var x *Execution
	require.Eventually(f.t, func() bool {
		var err error
		x, err = f.r.Store().GetExecution(context.Background(), ObjectName(display))
		return err == nil && x.Status.Phase == status
	}, 60*time.Second, 50*time.Millisecond, "%s never reached %s (last: %+v)", display, status, x)
	return x
}

// settle waits until the reconciler has nothing in hand.
func (f *fixture) settle() {
	f.t.Helper()
	require.Eventually(f.t, f.r.Idle, 60*time.Second, 20*time.Millisecond)
}

func (f *fixture) image() string {
	d, err := f.cs.AppsV1().Deployments(f.ns).Get(context.Background(), "web", metav1.GetOptions{})
	require.NoError(f.t, err)
	return d.Spec.Template.Spec.Containers[0].Image
}

func (f *fixture) eventReasons(ns, name string) []string {
	list, err := f.cs.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	require.NoError(f.t, err)
	var reasons []string
	for _, e := range list.Items {
		reasons = append(reasons, e.Reason)
	}
	return reasons
}

// subset reports whether every one of want is in have.
func subset(have []string, want ...string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func (f *fixture) executions() []Execution {
	all, err := f.r.Store().ListExecutions(context.Background(), "web")
	require.NoError(f.t, err)
	return all
}

func TestRollbackToLastKnownGood(t *testing.T) {
	f := newFixture(t, true)
	f.deadline = 600 // Kubernetes' default: fail-fast finds the failure, not the deadline

	f.sync(f.commit("c1", "release 1.0", "1.0"))
	x := f.waitFor("web#1", Completed)
	assert.Equal(t, "registry.example/web:1.0", x.Status.Image)
	assert.Equal(t, "registry.example/web:1.0", f.image())

	f.sync(f.commit("c2", "release broken", "broken-2.0"))
	parent := f.waitFor("web#2", RollbackCompleted)
	rb := f.waitFor("web_dev_rollback#1", Completed)
	assert.Equal(t, "registry.example/web:1.0", f.image(), "the known-good image is back")
	for _, comment := range []string{parent.Status.Comment, rb.Status.Comment} {
		assert.Contains(t, comment, "stage dev")
		assert.Contains(t, comment, `task "Verify deployment"`)
		assert.Contains(t, comment, "pods: Deployment "+f.ns+"/web: pod web-")
		assert.Contains(t, comment, "container web CrashLoopBackOff: back-off restarting failed container")
		assert.Contains(t, comment, "commit c2")
		assert.Contains(t, comment, "rolling back to commit c1 (image registry.example/web:1.0)")
	}
	assert.Equal(t, "web-dev-rollback-1", parent.Status.Rollback)
	assert.Equal(t, "web-2", rb.Spec.Parent)

	ledger, err := f.r.Store().Ledger(context.Background(), "web", "dev")
	require.NoError(t, err)
	assert.Equal(t, "c1", ledger.Status.Current.Commit)
	assert.Equal(t, "web_dev_rollback#1", ledger.Status.Current.RestoredBy)
	require.Len(t, ledger.Status.Failed, 1)
	assert.Equal(t, "c2", ledger.Status.Failed[0].Commit)

	// Events tell the story on the Deployment and on the execution (client-go sends them in
	// the background).
	assert.Eventually(t, func() bool {
		return subset(f.eventReasons(f.ns, "web"), "ReleaseVerified", "ReleaseFailed", "RolledBack") &&
			subset(f.eventReasons(f.records, "web-2"), "RUNNING", "ROLLING_BACK", "ROLLBACK_COMPLETED")
	}, 10*time.Second, 20*time.Millisecond, "reasons on the Deployment: %v; on the execution: %v", f.eventReasons(f.ns, "web"), f.eventReasons(f.records, "web-2"))

	// Quarantine: polling the bad commit again, or an unrelated commit with the same
	// release, applies nothing and records nothing.
	f.sync(f.targets["c2"])
	f.settle()
	unrelated := f.commit("c3", "docs only", "broken-2.0")
	f.sync(unrelated)
	f.settle()
	assert.Len(t, f.executions(), 3)
	assert.Equal(t, "registry.example/web:1.0", f.image())

	// A revert brings back the verified release: recorded as a redeploy of web#1.
	f.sync(f.commit("c4", "Revert \"release broken\"\n\nThis reverts commit c2.", "1.0"))
	redeploy := f.waitFor("web#3", Completed)
	assert.Contains(t, redeploy.Status.Comment, "redeploy of the release verified by web#1")
	ledger, err = f.r.Store().Ledger(context.Background(), "web", "dev")
	require.NoError(t, err)
	assert.Equal(t, "c4", ledger.Status.Current.Commit)
	assert.Empty(t, ledger.Status.Current.RestoredBy)

	// A new commit that changes the release is tried.
	f.sync(f.commit("c5", "release 1.1", "1.1"))
	f.waitFor("web#4", Completed)
	assert.Equal(t, "registry.example/web:1.1", f.image())
}

func TestFirstDeployFails(t *testing.T) {
	f := newFixture(t, true)
	f.sync(f.commit("c1", "broken from the start", "broken-1"))
	x := f.waitFor("web#1", Failed)
	assert.Contains(t, x.Status.Comment, "no known-good release to roll back to")
	assert.Empty(t, x.Status.Rollback)
	f.settle()
	assert.Len(t, f.executions(), 1, "no rollback execution")
}

func TestDriftIsRestored(t *testing.T) {
	f := newFixture(t, true)
	good := f.commit("c1", "release 1.0", "1.0")
	f.sync(good)
	f.waitFor("web#1", Completed)
	f.settle()

	d, err := f.cs.AppsV1().Deployments(f.ns).Get(context.Background(), "web", metav1.GetOptions{})
	require.NoError(t, err)
	d.Spec.Template.Spec.Containers[0].Image = "registry.example/web:hand-edit"
	_, err = f.cs.AppsV1().Deployments(f.ns).Update(context.Background(), d, metav1.UpdateOptions{FieldManager: "kubectl-edit"})
	require.NoError(t, err)
	require.Equal(t, "registry.example/web:hand-edit", f.image())

	f.sync(good) // the next reconcile of the same commit
	f.settle()
	assert.Equal(t, "registry.example/web:1.0", f.image())
	assert.Len(t, f.executions(), 1, "restoring drift is not an execution")
}

func TestSelfHealOffOnlyReports(t *testing.T) {
	f := newFixture(t, true)
	f.stage.SelfHeal = false
	good := f.commit("c1", "release 1.0", "1.0")
	f.sync(good)
	f.waitFor("web#1", Completed)
	f.settle()
	d, err := f.cs.AppsV1().Deployments(f.ns).Get(context.Background(), "web", metav1.GetOptions{})
	require.NoError(t, err)
	d.Spec.Template.Spec.Containers[0].Image = "registry.example/web:hand-edit"
	_, err = f.cs.AppsV1().Deployments(f.ns).Update(context.Background(), d, metav1.UpdateOptions{})
	require.NoError(t, err)
	f.sync(good)
	f.settle()
	assert.Equal(t, "registry.example/web:hand-edit", f.image())
}

// TestNewestQueuedCommitWins: commits arriving during an execution are QUEUED; the newest
// wins and the queued executions it supersedes are CANCELED.
func TestNewestQueuedCommitWins(t *testing.T) {
	f := newFixture(t, true)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	defer slow.Close()
	// Verification takes 20 health checks 100ms apart: time for two more commits to arrive.
	f.stage.Verify.HealthCheck = &planner.HealthCheck{URL: slow.URL, Interval: planner.Duration{Duration: 100 * time.Millisecond},
		Successes: 20, Failures: 3, Timeout: planner.Duration{Duration: time.Minute}}

	f.sync(f.commit("c1", "release 1.0", "1.0"))
	f.waitFor("web#1", Running)
	f.sync(f.commit("c2", "release 1.1", "1.1"))
	f.waitFor("web#2", Queued)
	f.sync(f.commit("c3", "release 1.2", "1.2"))
	canceled := f.waitFor("web#2", Canceled)
	assert.Equal(t, "superseded by commit c3", canceled.Status.Comment)
	f.waitFor("web#3", Queued)

	f.waitFor("web#1", Completed)
	x := f.waitFor("web#3", Completed)
	assert.Equal(t, "c3", x.Spec.Commit)
	assert.Equal(t, "registry.example/web:1.2", f.image())
	f.settle()
	assert.Len(t, f.executions(), 3)
}

// TestUnreachableClusterWaitsInPlace: a stage whose cluster cannot be reached waits in the
// same execution (WAITING, with a growing back-off), without quarantining the release or
// rolling back; once the cluster answers, that execution completes.
func TestUnreachableClusterWaitsInPlace(t *testing.T) {
	f := newFixture(t, true)
	target, err := NewCluster("dev", cluster.Config)
	require.NoError(t, err)
	t.Cleanup(target.Close)
	var mu sync.Mutex
	down := true
	f.r.opts.Clusters = func(name string) (*Cluster, error) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return nil, fmt.Errorf("cluster %q: dial tcp 127.0.0.1:1: connect: connection refused", name)
		}
		return target, nil
	}
	f.r.opts.RetryBackoff = 200 * time.Millisecond

	f.sync(f.commit("c1", "release 1.0", "1.0"))
	x := f.waitFor("web#1", Waiting)
	assert.Equal(t, FailureWaiting, x.Status.Failure)
	assert.Contains(t, x.Status.Comment, "connection refused")
	assert.Contains(t, x.Status.Comment, "trying again in")
	// The back-off grows: the third attempt waits four times as long as the first.
	require.Eventually(t, func() bool {
		x, err := f.r.Store().GetExecution(context.Background(), "web-1")
		return err == nil && strings.Contains(x.Status.Comment, "attempt 3 failed, trying again in 800ms")
	}, 10*time.Second, 20*time.Millisecond)
	ledger, err := f.r.Store().Ledger(context.Background(), "web", "dev")
	require.NoError(t, err)
	assert.Empty(t, ledger.Status.Failed, "a cluster failure does not quarantine the release")

	mu.Lock()
	down = false
	mu.Unlock()
	x = f.waitFor("web#1", Completed)
	assert.Empty(t, x.Status.Failure)
	assert.Equal(t, "registry.example/web:1.0", f.image())
	f.settle()
	assert.Len(t, f.executions(), 1, "one execution, however many attempts")
}

// TestBranchMovedBack: a reset and force-push puts the branch back on a commit that ran
// before. The stage follows it, in an execution whose comment says so, and only once.
func TestBranchMovedBack(t *testing.T) {
	f := newFixture(t, true)
	c1 := f.commit("c1", "release 1.0", "1.0")
	f.sync(c1)
	f.waitFor("web#1", Completed)
	f.sync(f.commit("c2", "release 1.1", "1.1"))
	f.waitFor("web#2", Completed)
	require.Equal(t, "registry.example/web:1.1", f.image())

	f.sync(c1) // git reset --hard HEAD~1 && git push -f
	x := f.waitFor("web#3", Completed)
	assert.Equal(t, "c1", x.Spec.Commit)
	assert.Contains(t, x.Status.Comment, "the branch moved back to commit c1 (reset or rewritten), which web#1 ran before; web#2 ran commit c2 since")
	assert.Contains(t, x.Status.Comment, "redeploy of the release verified by web#1")
	assert.Equal(t, "registry.example/web:1.0", f.image())

	f.sync(c1) // the next poll of the same head
	f.settle()
	assert.Len(t, f.executions(), 3, "the commit runs once more, not at every poll")
}
