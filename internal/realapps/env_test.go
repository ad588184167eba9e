package realapps

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/daemontest"
	"ebb.dev/ebb/internal/gitserver"
	"ebb.dev/ebb/internal/proc"
	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

// resync is the daemons' drift check period.
const resync = 2 * time.Second

// app is one application of planner/testdata, as its authors wrote it.
type app struct {
	// dir is its directory under planner/testdata.
	dir string
	// service is what the pipeline's spec.service names: the app's Deployment, as rendered.
	service string
	// image and tag are the Deployment's image, as the manifests have it; `ebb new` takes the
	// pipeline's input from there.
	image, tag string
}

var (
	guestbook          = app{dir: "argocd-example-apps/guestbook", service: "guestbook-ui", image: "gcr.io/google-samples/gb-frontend", tag: "v5"}
	kustomizeGuestbook = app{dir: "argocd-example-apps/kustomize-guestbook", service: "kustomize-guestbook-ui", image: "gcr.io/google-samples/gb-frontend", tag: "v5"}
	sockShop           = app{dir: "argocd-example-apps/sock-shop", service: "front-end", image: "weaveworksdemos/front-end", tag: "0.3.12"}
	podinfo            = app{dir: "podinfo-kustomize", service: "podinfo", image: "ghcr.io/stefanprodan/podinfo", tag: "6.14.1"}
)

// env is one pipeline of one app in its own Git repository, with its own records namespace
// in the home cluster (dev), and the daemon a test starts for it. Its stages deploy to the
// namespaces <name>-dev and <name>.
type env struct {
	t    testing.TB
	name string // pipeline name; also its namespaces
	app  app
	dir  string

	repo      *gitserver.WorkTree
	repoURL   string
	gitServer *gitserver.Server // with envOptions.server
	daemonEnv []string
	records   string
	store     *reconciler.Store
	config    string // the daemon config file

	home           *testcluster.Cluster // where the records live
	devCluster     *testcluster.Cluster // where the dev stage deploys
	devCS, prodCS  kubernetes.Interface // as cluster administrator
	devDyn, prodDy dynamic.Interface

	// model is the stages' deployment model; default rolling.
	model string
	// devHealth and prodHealth, when set, are the stages' verify.healthCheck, as YAML flow
	// mappings.
	devHealth, prodHealth string
}

type envOptions struct {
	// server serves the repository over smart HTTP with basic auth; default a local
	// repository (file://), watched by fsnotify.
	server bool
	// devCluster is where the dev stage deploys; default dev.
	devCluster *testcluster.Cluster
	// home holds the records (with ebb's CRDs installed); default dev.
	home *testcluster.Cluster
	// devKubeconfig is how the daemon reaches the dev stage's cluster; default its
	// administrator's kubeconfig.
	devKubeconfig string
}

// newEnv makes the env of pipeline name for a, and writes a's files, as written, into the
// repository under apps/<name>/. The test's cleanup deletes every namespace it used.
func newEnv(t testing.TB, name string, a app, opts envOptions) *env {
	t.Helper()
	ctx := context.Background()
	if opts.devCluster == nil {
		opts.devCluster = dev
	}
	if opts.devKubeconfig == "" {
		opts.devKubeconfig = opts.devCluster.Kubeconfig
	}
	if opts.home == nil {
		opts.home = dev
	}
	e := &env{
		t: t, name: name, app: a, dir: t.TempDir(), devCluster: opts.devCluster, home: opts.home,
		devCS: kubernetes.NewForConfigOrDie(opts.devCluster.Config), prodCS: kubernetes.NewForConfigOrDie(prod.Config),
		devDyn: dynamic.NewForConfigOrDie(opts.devCluster.Config), prodDy: dynamic.NewForConfigOrDie(prod.Config),
		model: "rolling",
	}
	home := kubernetes.NewForConfigOrDie(opts.home.Config)
	ns, err := home.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-" + name + "-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	e.records = ns.Name
	e.store = reconciler.NewStore(dynamic.NewForConfigOrDie(opts.home.Config), e.records)
	t.Cleanup(func() {
		deleteNamespace(t, home, e.records)
		deleteNamespace(t, e.devCS, e.devNS())
		deleteNamespace(t, e.prodCS, e.prodNS())
	})

	if opts.server {
		const user, password = "ebb", "realapps-pa55word"
		srv, err := gitserver.New(filepath.Join(e.dir, "server"), gitserver.Options{Username: user, Password: password})
		require.NoError(t, err)
		t.Cleanup(func() { srv.Close() })
		e.gitServer = srv
		e.repoURL, err = srv.CreateRepo(name)
		require.NoError(t, err)
		e.repo, err = gitserver.Clone(srv.AuthURL(name, user, password), filepath.Join(e.dir, "work"))
		require.NoError(t, err)
		e.daemonEnv = []string{"EBB_GIT_USERNAME=" + user, "EBB_GIT_PASSWORD=" + password}
	} else {
		e.repo, err = gitserver.Init(filepath.Join(e.dir, "repo"))
		require.NoError(t, err)
		e.repoURL = "file://" + e.repo.Dir
	}
	e.config = filepath.Join(e.dir, "ebb-config.yaml")
	require.NoError(t, os.WriteFile(e.config, []byte(fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
kind: Config
clusters:
- name: dev
  kubeconfig: %s
- name: prod
  kubeconfig: %s
`, opts.devKubeconfig, prod.Kubeconfig)), 0o600))
	require.NoError(t, os.CopyFS(e.appDir(), os.DirFS(filepath.Join(testdata, a.dir))))
	return e
}

// beside adds the pipeline name of app a to e: the env it returns shares e's repository,
// records and daemons, and writes a's files, as written, under apps/<name>/. Its stages
// deploy to the namespaces <name>-dev and <name>, which the test's cleanup deletes.
func (e *env) beside(name string, a app) *env {
	e.t.Helper()
	f := *e
	f.name, f.app = name, a
	e.t.Cleanup(func() {
		deleteNamespace(e.t, f.devCS, f.devNS())
		deleteNamespace(e.t, f.prodCS, f.prodNS())
	})
	require.NoError(e.t, os.CopyFS(f.appDir(), os.DirFS(filepath.Join(testdata, a.dir))))
	return &f
}

func deleteNamespace(t testing.TB, cs kubernetes.Interface, ns string) {
	err := cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	if err != nil && !strings.Contains(err.Error(), "not found") {
		t.Logf("delete namespace %s: %v", ns, err)
	}
}

func (e *env) devNS() string  { return e.name + "-dev" }
func (e *env) prodNS() string { return e.name }

// appDir is the app's directory in the work tree.
func (e *env) appDir() string { return filepath.Join(e.repo.Dir, "apps", e.name) }

// pipeline is the pipeline `ebb new` writes for the app (a dev and a prod stage, rolling,
// rollback on, no tuned timeouts), enabled, releasing tag. `ebb new` names the namespaces
// after the app's Namespace or Service; these are named after the pipeline, so that tests of
// the same app run side by side.
func (e *env) pipeline(tag string) string {
	return pipelineFile(e.name, "apps/"+e.name, e.app, tag, e.model, e.devHealth, e.prodHealth)
}

// pipelineFile is the pipeline `ebb new` writes for app a in directory manifests, named name,
// enabled, with stages dev (namespace <name>-dev, verified also by devHealth when set) and prod
// (namespace <name>, prodHealth) of model.
func pipelineFile(name, manifests string, a app, tag, model, devHealth, prodHealth string) string {
	stage := func(stage, ns, health string) string {
		s := fmt.Sprintf(`  - name: %s
    cluster: %s
    namespace: %s
    model: %s
    verify:
      rollout: {timeout: 5m}
`, stage, stage, ns, model)
		if health != "" {
			s += "      healthCheck: " + health + "\n"
		}
		return s + "    rollback: true\n"
	}
	return fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata:
  name: %s
spec:
  enabled: true
  input:
    image: %s
    tag: %q
  manifests: %s
  service: %s
  stages:
`, name, a.image, tag, manifests, a.service) + stage("dev", name+"-dev", devHealth) + stage("prod", name, prodHealth)
}

// release commits (and pushes, for a served repository) the pipeline releasing tag, with
// whatever else changed in the work tree, and returns the commit.
func (e *env) release(tag, message string) string {
	e.t.Helper()
	require.NoError(e.t, e.repo.WriteFiles(map[string]string{"pipelines/" + e.name + ".yaml": e.pipeline(tag)}))
	sha, err := e.repo.Commit(message)
	require.NoError(e.t, err)
	if strings.HasPrefix(e.repoURL, "http") {
		require.NoError(e.t, e.repo.Push())
	}
	return sha
}

// writeAppFile writes a file of the app (path relative to its directory).
func (e *env) writeAppFile(path, content string) {
	e.t.Helper()
	require.NoError(e.t, e.repo.WriteFiles(map[string]string{"apps/" + e.name + "/" + path: content}))
}

// removeAppFile deletes a file of the app.
func (e *env) removeAppFile(path string) {
	e.t.Helper()
	require.NoError(e.t, e.repo.RemoveFiles("apps/"+e.name+"/"+path))
}

// editAppFile replaces old with new in a file of the app; old must be there.
func (e *env) editAppFile(path, old, new string) {
	e.t.Helper()
	file := filepath.Join(e.appDir(), path)
	data, err := os.ReadFile(file)
	require.NoError(e.t, err)
	require.Contains(e.t, string(data), old, "%s has no %q", path, old)
	require.NoError(e.t, os.WriteFile(file, []byte(strings.Replace(string(data), old, new, 1)), 0o644))
}

// daemon is one `ebb run` for an env, serving metrics on port.
type daemon struct {
	*daemontest.Daemon
	port int
}

// startDaemon runs `ebb run` for e: polls every second, drift checks every resync, plus extra
// flags.
func (e *env) startDaemon(extra ...string) *daemon {
	e.t.Helper()
	port := freePort(e.t)
	args := append([]string{"run",
		"--repo", e.repoURL, "--branch", "main", "--config", e.config,
		"--kubeconfig", e.home.Kubeconfig, "--namespace", e.records,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--interval", "1s", "--resync", resync.String(), "--log-level", "debug",
		"--cache-dir", filepath.Join(e.dir, "cache"),
	}, extra...)
	d := &daemon{Daemon: daemontest.Start(e.t, ebbBin, e.daemonEnv, args...), port: port}
	// Tests read its metrics from the start.
	require.Eventually(e.t, func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 20*time.Millisecond, "the daemon does not serve /metrics")
	return d
}

func (e *env) executions() []reconciler.Execution {
	e.t.Helper()
	list, err := e.store.ListExecutions(context.Background(), e.name)
	require.NoError(e.t, err)
	return list
}

// deploys returns the Deploy executions of commit.
func (e *env) deploys(commit string) []reconciler.Execution {
	e.t.Helper()
	var out []reconciler.Execution
	for _, x := range e.executions() {
		if x.Spec.Kind == reconciler.KindDeploy && x.Spec.Commit == commit {
			out = append(out, x)
		}
	}
	return out
}

// rollbacks names the rollback executions of the pipeline.
func (e *env) rollbacks() []string {
	e.t.Helper()
	var out []string
	for _, x := range e.executions() {
		if x.Spec.Kind == reconciler.KindRollback {
			out = append(out, daemontest.Describe(&x))
		}
	}
	return out
}

// waitDone waits for the newest Deploy execution of commit to end (any terminal status) and
// returns it: a test then asserts which status, rather than waiting out a timeout for one
// that will not come.
func (e *env) waitDone(commit string, timeout time.Duration) *reconciler.Execution {
	e.t.Helper()
	return e.waitFor(commit, timeout, "end", func(x *reconciler.Execution) bool { return x.Status.Phase.Terminal() })
}

// waitFor waits until cond holds for the newest Deploy execution of commit.
func (e *env) waitFor(commit string, timeout time.Duration, what string, cond func(*reconciler.Execution) bool) *reconciler.Execution {
	e.t.Helper()
	var last *reconciler.Execution
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if list := e.deploys(commit); len(list) > 0 {
			last = &list[len(list)-1]
			if cond(last) {
				return last
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("the execution of commit %s did not %s within %s; last: %s; all: %s", short(commit), what, timeout, daemontest.Describe(last), e.describeAll())
	return nil
}

func describe(x *reconciler.Execution) string { return daemontest.Describe(x) }

// describeAll is every execution of the pipeline, for messages.
func (e *env) describeAll() string {
	var out []string
	list, err := e.store.ListExecutions(context.Background(), e.name)
	if err != nil {
		return err.Error()
	}
	for i := range list {
		out = append(out, daemontest.Describe(&list[i])+" failure="+string(list[i].Status.Failure))
	}
	return strings.Join(out, "; ")
}

// requireCompleted waits for commit's execution to end and requires it COMPLETED.
func (e *env) requireCompleted(commit string) *reconciler.Execution {
	e.t.Helper()
	x := e.waitDone(commit, 3*time.Minute)
	require.Equal(e.t, reconciler.Completed, x.Status.Phase, "%s; all: %s", daemontest.Describe(x), e.describeAll())
	return x
}

// image returns the image of the app's Deployment in a namespace.
func image(t testing.TB, cs kubernetes.Interface, ns, deployment string) string {
	t.Helper()
	d, err := cs.AppsV1().Deployments(ns).Get(context.Background(), deployment, metav1.GetOptions{})
	if err != nil {
		return "none: " + err.Error()
	}
	return d.Spec.Template.Spec.Containers[0].Image
}

func (e *env) imageOf(tag string) string { return e.app.image + ":" + tag }

// driftEvents lists the DriftRestored Events in a namespace, one line per object with how
// many times it was restored.
func driftEvents(t testing.TB, cs kubernetes.Interface, ns string) []string {
	t.Helper()
	list, err := cs.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "reason=DriftRestored"})
	require.NoError(t, err)
	counts := map[string]int32{}
	for _, ev := range list.Items {
		counts[ev.InvolvedObject.Kind+"/"+ev.InvolvedObject.Name] += max(ev.Count, 1)
	}
	var out []string
	for obj, n := range counts {
		out = append(out, fmt.Sprintf("%s restored %d times", obj, n))
	}
	sort.Strings(out)
	return out
}

// scrape reads the daemon's metrics as "name{labels}" -> value.
func scrape(t testing.TB, port int) map[string]float64 {
	t.Helper()
	out, err := readMetrics(port)
	require.NoError(t, err)
	return out
}

// readMetrics is scrape for a goroutine other than the test's: it returns the error.
func readMetrics(port int) (map[string]float64, error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// sum adds the series of metric name whose labels contain every one of labels (`k="v"`).
func sum(m map[string]float64, name string, labels ...string) float64 {
	total := 0.0
next:
	for k, v := range m {
		if !strings.HasPrefix(k, name+"{") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(k, l) {
				continue next
			}
		}
		total += v
	}
	return total
}

// series lists the series of metric name whose labels contain every one of labels.
func series(m map[string]float64, name string, labels ...string) []string {
	var out []string
next:
	for k, v := range m {
		if !strings.HasPrefix(k, name+"{") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(k, l) {
				continue next
			}
		}
		out = append(out, fmt.Sprintf("%s %g", k, v))
	}
	return out
}

func freePort(t testing.TB) int {
	t.Helper()
	port, err := proc.FreePort()
	require.NoError(t, err)
	return port
}

func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}
