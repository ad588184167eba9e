package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"ebb.dev/ebb/gitsource"
	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/internal/daemontest"
	"ebb.dev/ebb/internal/gitserver"
	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

// cluster is the real control plane the daemon records in and deploys to, one per package.
var cluster *testcluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(testcluster.Main(m, testcluster.Options{Name: "daemon"}, &cluster))
}

// env is the real daemon following a real local Git repository, recording in its own
// namespace and deploying its "dev" stages to the test cluster.
type env struct {
	t     *testing.T
	d     *Daemon
	repo  *gitserver.WorkTree
	ns    string
	store *reconciler.Store
	cs    kubernetes.Interface
}

func newEnv(t *testing.T, files map[string]string) (*env, string) {
	t.Helper()
	ctx := context.Background()
	top, err := testcluster.ModuleRoot()
	require.NoError(t, err)
	dyn := dynamic.NewForConfigOrDie(cluster.Config)
	require.NoError(t, reconciler.InstallCRDs(ctx, dyn, filepath.Join(top, "charts", "ebb", "crds")))
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-status-"}}, metav1.CreateOptions{})
	require.NoError(t, err)

	repo, err := gitserver.Init(filepath.Join(t.TempDir(), "repo"))
	require.NoError(t, err)
	sha, err := repo.CommitFiles("first", files)
	require.NoError(t, err)

	src := gitsource.DefaultOptions()
	src.URL, src.Branch, src.CacheDir, src.Interval = repo.Dir, "main", t.TempDir(), 200*time.Millisecond
	d, err := newDaemon(Options{
		Source: src, Config: &config.Config{Clusters: []config.Cluster{{Name: "dev", InCluster: true}}},
		Home: rest.CopyConfig(cluster.Config), Namespace: ns.Name, Resync: time.Hour,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- d.run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
		_ = d.source.Close()
	})
	return &env{t: t, d: d, repo: repo, ns: ns.Name, store: reconciler.NewStore(dyn, ns.Name), cs: cs}, sha
}

// shard returns the daemon's only shard, once it acts for it.
func (e *env) shard() *shard {
	var sh *shard
	require.Eventually(e.t, func() bool {
		e.d.mu.Lock()
		defer e.d.mu.Unlock()
		sh = e.d.acting[-1]
		return sh != nil
	}, 30*time.Second, 10*time.Millisecond, "the daemon does not act")
	return sh
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// pipelineFile is a pipeline of the test app with one stage, dev, in namespace <name>-dev of
// cluster, and extra lines at the end of its spec.
func pipelineFile(name, tag, cluster string, enabled bool, extra string) string {
	return fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata:
  name: %[1]s
spec:
  enabled: %[4]t
  input:
    image: registry.example/%[1]s
    tag: %[2]q
  manifests: apps/%[1]s
  service: web
  stages:
  - name: dev
    cluster: %[3]s
    namespace: %[1]s-dev
    verify:
      rollout: {timeout: 1m}
    rollback: true
%[5]s`, name, tag, cluster, enabled, extra)
}

// app adds a pipeline file and the test app's manifests to files.
func app(files map[string]string, name, pipeline string) map[string]string {
	files["pipelines/"+name+".yaml"] = pipeline
	for k, v := range daemontest.AppFiles(name, 1) {
		files[k] = v
	}
	return files
}

// pipeline waits until the Pipeline object name satisfies ok, and returns it.
func (e *env) pipeline(name string, ok func(*reconciler.Pipeline) bool) *reconciler.Pipeline {
	e.t.Helper()
	var last *reconciler.Pipeline
	if !assert.Eventually(e.t, func() bool {
		list, err := e.store.ListPipelines(context.Background())
		if err != nil {
			return false
		}
		for i := range list {
			if list[i].Name == name {
				last = &list[i]
				return ok(last)
			}
		}
		return false
	}, 90*time.Second, 50*time.Millisecond) {
		e.t.Fatalf("pipeline %s never got the status wanted; last: %+v", name, last)
	}
	return last
}

// ready returns a test for Ready with status and reason.
func ready(status metav1.ConditionStatus, reason string) func(*reconciler.Pipeline) bool {
	return func(p *reconciler.Pipeline) bool {
		c := meta.FindStatusCondition(p.Status.Conditions, reconciler.ConditionReady)
		return c != nil && c.Status == status && c.Reason == reason
	}
}

func condition(p *reconciler.Pipeline, typ string) *metav1.Condition {
	return meta.FindStatusCondition(p.Status.Conditions, typ)
}

// events lists the Events on Pipeline name.
func (e *env) events(name string) []corev1.Event {
	e.t.Helper()
	list, err := e.cs.CoreV1().Events(e.ns).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.kind=Pipeline,involvedObject.name=" + name})
	require.NoError(e.t, err)
	return list.Items
}

func eventsWith(events []corev1.Event, typ, reason string) int {
	n := 0
	for _, ev := range events {
		if ev.Type == typ && ev.Reason == reason {
			n++
		}
	}
	return n
}

// writes counts the daemon's write requests to the cluster it records in, from its
// ebb_kube_requests_total metric.
func (e *env) writes() float64 {
	return e.requests(func(l map[string]string) bool { return l["cluster"] == "home" && l["verb"] != "GET" })
}

// pipelineWrites counts the daemon's writes of Pipeline objects.
func (e *env) pipelineWrites() float64 {
	return e.requests(func(l map[string]string) bool { return l["resource"] == "pipelines" && l["verb"] != "GET" })
}

// requests sums the series of ebb_kube_requests_total whose labels match.
func (e *env) requests(match func(labels map[string]string) bool) float64 {
	e.t.Helper()
	families, err := e.d.reg.Gather()
	require.NoError(e.t, err)
	n := 0.0
	for _, f := range families {
		if f.GetName() != "ebb_kube_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if match(labels) {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// waitPlanned waits until the daemon planned commit.
func (e *env) waitPlanned(commit string) {
	e.t.Helper()
	status := e.shard().status
	require.Eventually(e.t, func() bool {
		status.mu.Lock()
		defer status.mu.Unlock()
		return status.view != nil && status.view.commit == commit
	}, 30*time.Second, 20*time.Millisecond, "the daemon did not plan commit %s", commit)
}

// commit commits files and removes paths in the repository the daemon follows.
func (e *env) commit(message string, files map[string]string, remove ...string) string {
	e.t.Helper()
	if len(remove) > 0 {
		require.NoError(e.t, e.repo.RemoveFiles(remove...))
	}
	require.NoError(e.t, e.repo.WriteFiles(files))
	sha, err := e.repo.Commit(message)
	require.NoError(e.t, err)
	return sha
}

// TestPipelineStatus runs the daemon over a repository with a good pipeline next to broken
// ones, and follows the good one as it breaks, is removed from Git and comes back.
func TestPipelineStatus(t *testing.T) {
	web := pipelineFile("web", "1.0", "dev", true, "")
	files := app(map[string]string{}, "web", web)
	files["pipelines/api.yaml"] = pipelineFile("api", "1.0", "dev", true, "  strategy: fast\n")
	files["pipelines/ghost.yaml"] = pipelineFile("ghost", "1.0", "nowhere", true, "")
	app(files, "later", pipelineFile("later", "1.0", "dev", false, ""))
	app(files, "norender", strings.Replace(pipelineFile("norender", "1.0", "dev", true, ""), "service: web", "service: missing", 1))
	files["pipelines/garbage.yaml"] = "apiVersion: ebb.dev/v1alpha1\nkind: Pipeline\nspec: {stages: [\n"
	e, first := newEnv(t, files)

	good := e.pipeline("web", ready(metav1.ConditionTrue, "Succeeded"))
	assert.Equal(t, reconciler.PipelineSpec{Pipeline: "web", File: "pipelines/web.yaml", Enabled: true}, good.Spec)
	assert.Equal(t, first, good.Status.LastPlannedCommit.SHA)
	assert.Equal(t, first[:7], good.Status.LastPlannedCommit.ShortSHA)
	assert.Contains(t, condition(good, reconciler.ConditionReady).Message, first[:7])
	assert.Nil(t, condition(good, reconciler.ConditionStalled))
	assert.Nil(t, condition(good, reconciler.ConditionReconciling))
	assert.Nil(t, good.Status.LastError)
	require.Len(t, good.Status.Stages, 1)
	stage := good.Status.Stages[0]
	assert.Equal(t, "dev", stage.Name)
	assert.Equal(t, "dev", stage.Cluster)
	assert.Equal(t, "web-dev", stage.Namespace)
	ledger, err := e.store.Ledger(context.Background(), "web", "dev")
	require.NoError(t, err)
	require.NotNil(t, stage.Current)
	assert.Equal(t, *ledger.Status.Current, *stage.Current, "the stage's releases are its ledger's")
	assert.Equal(t, ledger.Status.LastKnownGood, stage.LastKnownGood)
	assert.Equal(t, "web#1", stage.Current.Execution)
	assert.EqualValues(t, good.Generation, good.Status.ObservedGeneration)
	assert.Eventually(t, func() bool { return eventsWith(e.events("web"), corev1.EventTypeNormal, "Succeeded") == 1 }, 10*time.Second, 20*time.Millisecond,
		"a Normal Event when it became Ready (client-go sends it in the background)")

	t.Run("malformed next to the good one", func(t *testing.T) {
		api := e.pipeline("api", ready(metav1.ConditionFalse, "InvalidPipeline"))
		assert.Regexp(t, `^pipelines/api\.yaml:19:3: unknown field "strategy"`, condition(api, reconciler.ConditionReady).Message)
		stalled := condition(api, reconciler.ConditionStalled)
		require.NotNil(t, stalled, "a pipeline a person must fix is Stalled")
		assert.Equal(t, metav1.ConditionTrue, stalled.Status)
		require.NotNil(t, api.Status.LastError)
		assert.Equal(t, reconciler.PipelineError{Reason: "InvalidPipeline", Message: `pipelines/api.yaml:19:3: unknown field "strategy" in spec`,
			File: "pipelines/api.yaml", Line: 19, Column: 3, Commit: first}, *api.Status.LastError)
		assert.Eventually(t, func() bool { return eventsWith(e.events("api"), corev1.EventTypeWarning, "InvalidPipeline") == 1 }, 10*time.Second, 20*time.Millisecond)
	})
	t.Run("unknown cluster", func(t *testing.T) {
		ghost := e.pipeline("ghost", ready(metav1.ConditionFalse, "InvalidPipeline"))
		assert.Regexp(t, `^pipelines/ghost\.yaml:14:14: unknown cluster "nowhere": the daemon config defines "dev"`, condition(ghost, reconciler.ConditionReady).Message)
		assert.NotNil(t, condition(ghost, reconciler.ConditionStalled))
	})
	t.Run("not enabled", func(t *testing.T) {
		later := e.pipeline("later", ready(metav1.ConditionFalse, "NotEnabled"))
		assert.False(t, later.Spec.Enabled)
		assert.Contains(t, condition(later, reconciler.ConditionReady).Message, "planned only")
		assert.Nil(t, condition(later, reconciler.ConditionStalled))
		assert.Nil(t, condition(later, reconciler.ConditionReconciling))
		list, err := e.store.ListExecutions(context.Background(), "later")
		require.NoError(t, err)
		assert.Empty(t, list, "a pipeline not enabled is not run")
	})
	t.Run("a stage that does not render", func(t *testing.T) {
		p := e.pipeline("norender", ready(metav1.ConditionFalse, "RenderFailed"))
		assert.Regexp(t, `^pipelines/norender\.yaml:10:14: render stage "dev" of pipeline "norender": service "missing"`, condition(p, reconciler.ConditionReady).Message)
		assert.NotNil(t, condition(p, reconciler.ConditionStalled))
		require.Len(t, p.Status.Stages, 1, "the stages of a pipeline that parsed are shown")
	})
	t.Run("a file with no readable name", func(t *testing.T) {
		p := e.pipeline("garbage", ready(metav1.ConditionFalse, "InvalidPipeline"))
		assert.Equal(t, "pipelines/garbage.yaml", p.Spec.File)
		assert.Regexp(t, `^pipelines/garbage\.yaml:\d+:\d+: `, condition(p, reconciler.ConditionReady).Message)
		assert.Contains(t, condition(p, reconciler.ConditionReady).Message, "named after the file")
	})

	t.Run("nothing changed, nothing written", func(t *testing.T) {
		require.Eventually(t, e.shard().rec.Idle, 30*time.Second, 50*time.Millisecond)
		require.NoError(t, e.shard().status.refresh(context.Background()))
		before := e.writes()
		e.shard().status.touchAll()
		require.NoError(t, e.shard().status.refresh(context.Background()))
		assert.Equal(t, before, e.writes(), "a second computation with nothing changed writes nothing")
		assert.Positive(t, before, "the counter counts the daemon's writes")
	})

	t.Run("a commit that changes no pipeline writes no Pipeline", func(t *testing.T) {
		require.Eventually(t, e.shard().rec.Idle, 30*time.Second, 50*time.Millisecond)
		require.NoError(t, e.shard().status.refresh(context.Background()))
		before := e.pipelineWrites()
		readme := e.commit("a README", map[string]string{"README.md": "nothing to deploy\n"})
		e.waitPlanned(readme)
		require.Eventually(t, e.shard().rec.Idle, 30*time.Second, 50*time.Millisecond)
		require.NoError(t, e.shard().status.refresh(context.Background()))
		assert.Equal(t, before, e.pipelineWrites(), "Pipeline objects written for a commit that changes none")
		p := e.pipeline("web", ready(metav1.ConditionTrue, "Succeeded"))
		assert.Equal(t, first, p.Status.LastPlannedCommit.SHA, "the commit that planned web as it is")
	})

	t.Run("good before, broken now", func(t *testing.T) {
		e.commit("break web", map[string]string{"pipelines/web.yaml": web + "  strategy: fast\n"})
		p := e.pipeline("web", ready(metav1.ConditionFalse, "InvalidPipeline"))
		assert.Contains(t, condition(p, reconciler.ConditionReady).Message, `pipelines/web.yaml:19:3: unknown field "strategy"`)
		assert.Contains(t, condition(p, reconciler.ConditionReady).Message, "the stages keep running their current releases")
		require.Len(t, p.Status.Stages, 1, "the stage info is kept")
		require.NotNil(t, p.Status.Stages[0].Current)
		assert.Equal(t, ledger.Status.Current.Hash, p.Status.Stages[0].Current.Hash)
		assert.Equal(t, "web-dev", p.Status.Stages[0].Namespace)
		assert.True(t, p.Spec.Enabled, "what the file said last is kept")
	})

	t.Run("removed from Git", func(t *testing.T) {
		removed := e.commit("remove web", nil, "pipelines/web.yaml")
		p := e.pipeline("web", ready(metav1.ConditionFalse, "RemovedFromGit"))
		msg := condition(p, reconciler.ConditionReady).Message
		assert.Contains(t, msg, "removed from Git at commit "+removed[:7])
		assert.Contains(t, msg, "dev (cluster dev, namespace web-dev) were left in the cluster, not pruned")
		assert.Contains(t, msg, "restore the file")
		assert.Contains(t, msg, "ebb.dev/pipeline=web")
		require.NotNil(t, p.Status.RemovedFromGit)
		assert.Equal(t, removed, p.Status.RemovedFromGit.SHA)
		require.Len(t, p.Status.Stages, 1)
		assert.NotNil(t, p.Status.Stages[0].Current, "the ledger is kept")
		assert.Eventually(t, func() bool { return eventsWith(e.events("web"), corev1.EventTypeWarning, "RemovedFromGit") == 1 }, 10*time.Second, 50*time.Millisecond)

		// Nothing was deleted: the Deployment runs, the ledger is there.
		dep, err := e.cs.AppsV1().Deployments("web-dev").Get(context.Background(), "web", metav1.GetOptions{})
		require.NoError(t, err)
		assert.Nil(t, dep.DeletionTimestamp)
		l, err := e.store.Ledger(context.Background(), "web", "dev")
		require.NoError(t, err)
		assert.NotEmpty(t, l.ResourceVersion)

		// A later commit and a resync change nothing: one Event, the same commit.
		readme := e.commit("unrelated", map[string]string{"README.md": "hello\n"})
		e.waitPlanned(readme)
		require.Eventually(t, e.shard().rec.Idle, 30*time.Second, 50*time.Millisecond)
		e.shard().status.touchAll()
		require.NoError(t, e.shard().status.refresh(context.Background()))
		p = e.pipeline("web", ready(metav1.ConditionFalse, "RemovedFromGit"))
		assert.Equal(t, removed, p.Status.RemovedFromGit.SHA)
		assert.Equal(t, 1, eventsWith(e.events("web"), corev1.EventTypeWarning, "RemovedFromGit"), "the Event is recorded once")
	})

	t.Run("the file comes back", func(t *testing.T) {
		e.commit("restore web", map[string]string{"pipelines/web.yaml": web})
		p := e.pipeline("web", ready(metav1.ConditionTrue, "Succeeded"))
		assert.Nil(t, p.Status.RemovedFromGit)
		assert.Nil(t, p.Status.LastError)
		list, err := e.store.ListExecutions(context.Background(), "web")
		require.NoError(t, err)
		assert.Len(t, list, 1, "the release it runs is the restored file's: nothing to run again")
	})
}
