// Package e2e runs the real ebb daemon process against two real local clusters, "dev" and
// "prod", and real Git repositories: the stories the reconciler exists for, from a push to a
// verified release or a rollback, across kill -9 and with two replicas.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

var (
	dev, prod       *testcluster.Cluster
	ebbBin, demoBin string
	moduleRoot      string
)

// scaleNodes is the kwok nodes of each cluster: room for the benchmarks' thousands of pods
// (each node takes 1000).
const scaleNodes = 4

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	ctx := context.Background()
	var err error
	if moduleRoot, err = testcluster.ModuleRoot(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bin, err := os.MkdirTemp("", "ebb-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(bin)
	ebbBin, demoBin = filepath.Join(bin, "ebb"), filepath.Join(bin, "demo")
	if err := daemontest.Build(moduleRoot, ebbBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	build := exec.Command("go", "build", "-o", demoBin, "./internal/cmd/demo")
	build.Dir = moduleRoot
	if b, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build the demo: %v\n%s", err, b)
		return 1
	}
	if dev, err = testcluster.Start(ctx, testcluster.Options{Name: "dev", Nodes: scaleNodes}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer dev.Stop()
	if prod, err = testcluster.Start(ctx, testcluster.Options{Name: "prod", Nodes: scaleNodes}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer prod.Stop()
	if err := reconciler.InstallCRDs(ctx, dynamic.NewForConfigOrDie(dev.Config), filepath.Join(moduleRoot, "charts", "ebb", "crds")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The approval policy ships with the chart as plain YAML; install it as Helm would.
	kubectl, err := testcluster.Bin("kubectl")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	policy := filepath.Join(moduleRoot, "charts", "ebb", "files", "approval-policy.yaml")
	if out, err := exec.Command(kubectl, "--kubeconfig", dev.Kubeconfig, "apply", "-f", policy).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "apply %s: %v\n%s", policy, err, out)
		return 1
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "dev cluster logs:\n%s\n", dev.LogTail(10))
	}
	return code
}

// env is one pipeline in its own Git repository, with its own records namespace, and the
// daemons a test starts for it.
type env struct {
	t         testing.TB
	name      string // pipeline name; also prefixes its namespaces
	dir       string
	repo      *gitserver.WorkTree
	repoURL   string
	records   string
	store     *reconciler.Store
	config    string
	devCS     kubernetes.Interface
	prodCS    kubernetes.Interface
	daemonEnv []string
	// healthURL, when set, is the dev stage's health check.
	healthURL string
	rollback  bool
}

type envOptions struct {
	// server serves the repository over smart HTTP with these credentials; nil uses a local
	// repository (file://) watched by fsnotify.
	server     *gitserver.Options
	healthURL  string
	noRollback bool
}

func newEnv(t testing.TB, name string, opts envOptions) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{
		t: t, name: name, dir: t.TempDir(), healthURL: opts.healthURL, rollback: !opts.noRollback,
		devCS: kubernetes.NewForConfigOrDie(dev.Config), prodCS: kubernetes.NewForConfigOrDie(prod.Config),
	}
	ns, err := e.devCS.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-" + name + "-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	e.records = ns.Name
	e.store = reconciler.NewStore(dynamic.NewForConfigOrDie(dev.Config), e.records)

	if opts.server != nil {
		srv, err := gitserver.New(filepath.Join(e.dir, "server"), *opts.server)
		require.NoError(t, err)
		t.Cleanup(func() { srv.Close() })
		e.repoURL, err = srv.CreateRepo(name)
		require.NoError(t, err)
		e.repo, err = gitserver.Clone(srv.AuthURL(name, opts.server.Username, opts.server.Password), filepath.Join(e.dir, "work"))
		require.NoError(t, err)
		e.daemonEnv = []string{"EBB_GIT_USERNAME=" + opts.server.Username, "EBB_GIT_PASSWORD=" + opts.server.Password}
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
`, dev.Kubeconfig, prod.Kubeconfig)), 0o600))
	return e
}

// files returns the repository's content for a release with image tag.
func (e *env) files(tag string) map[string]string { return e.pipelineFiles(e.name, tag, 3) }

// pipelineFiles returns the files of pipeline name, deploying replicas pods of image tag.
func (e *env) pipelineFiles(name, tag string, replicas int) map[string]string {
	health := ""
	if e.healthURL != "" {
		health = fmt.Sprintf("\n      healthCheck: {url: %q, interval: 100ms, successes: 3, failures: 3, timeout: 20s}", e.healthURL)
	}
	files := map[string]string{
		"pipelines/" + name + ".yaml": fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata:
  name: %[1]s
spec:
  enabled: true
  input:
    image: registry.example/%[1]s
    tag: %[2]q
  manifests: apps/%[1]s
  service: web
  stages:
  - name: dev
    cluster: dev
    namespace: %[1]s-dev
    verify:
      rollout: {timeout: 1m}%[3]s
    rollback: %[4]t
  - name: prod
    cluster: prod
    namespace: %[1]s-prod
    verify:
      rollout: {timeout: 1m}
    rollback: %[4]t
`, name, tag, health, e.rollback),
	}
	for path, content := range daemontest.AppFiles(name, replicas) {
		files[path] = content
	}
	return files
}

// release commits (and pushes, for a served repository) the release with image tag.
func (e *env) release(tag, message string) string {
	e.t.Helper()
	sha, err := e.repo.CommitFiles(message, e.files(tag))
	require.NoError(e.t, err)
	e.push()
	return sha
}

func (e *env) push() {
	e.t.Helper()
	if strings.HasPrefix(e.repoURL, "http") {
		require.NoError(e.t, e.repo.Push())
	}
}

// daemon is one `ebb run` process for an env, serving on port.
type daemon struct {
	*daemontest.Daemon
	port int
}

// startDaemon runs `ebb run` for e, with extra flags.
func (e *env) startDaemon(extra ...string) *daemon {
	e.t.Helper()
	port := freePort(e.t)
	args := append([]string{"run",
		"--repo", e.repoURL, "--branch", "main", "--config", e.config,
		"--kubeconfig", dev.Kubeconfig, "--namespace", e.records,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--interval", "1s", "--resync", "2s", "--log-level", "debug",
		"--cache-dir", filepath.Join(e.dir, "cache"),
	}, extra...)
	return &daemon{Daemon: daemontest.Start(e.t, ebbBin, e.daemonEnv, args...), port: port}
}

// waitExecution waits for the Deploy execution of commit to reach status.
func (e *env) waitExecution(commit string, status reconciler.Status) *reconciler.Execution {
	e.t.Helper()
	return daemontest.WaitExecution(e.t, e.store, e.name, commit, status)
}

// waitNamed waits for the execution with a display name to reach status.
func (e *env) waitNamed(display string, status reconciler.Status) *reconciler.Execution {
	e.t.Helper()
	var x *reconciler.Execution
	require.Eventually(e.t, func() bool {
		var err error
		x, err = e.store.GetExecution(context.Background(), reconciler.ObjectName(display))
		return err == nil && x.Status.Phase == status
	}, 90*time.Second, 20*time.Millisecond, "%s never reached %s; last: %s", display, status, describe(x))
	return x
}

func (e *env) executions() []reconciler.Execution {
	e.t.Helper()
	list, err := e.store.ListExecutions(context.Background(), e.name)
	require.NoError(e.t, err)
	return list
}

// image returns the image of the web Deployment in a stage's namespace.
func (e *env) image(cs kubernetes.Interface, stage string) string {
	e.t.Helper()
	d, err := cs.AppsV1().Deployments(e.name+"-"+stage).Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		return "none: " + err.Error()
	}
	return d.Spec.Template.Spec.Containers[0].Image
}

func (e *env) imageOf(tag string) string { return "registry.example/" + e.name + ":" + tag }

func describe(x *reconciler.Execution) string { return daemontest.Describe(x) }

func freePort(t testing.TB) int {
	t.Helper()
	port, err := proc.FreePort()
	require.NoError(t, err)
	return port
}
