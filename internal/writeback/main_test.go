package writeback_test

import (
	"context"
	"fmt"
	"os"
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
	"ebb.dev/ebb/internal/writeback"
	"ebb.dev/ebb/reconciler"
)

var (
	home   *testcluster.Cluster
	ebbBin string
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	ctx := context.Background()
	root, err := testcluster.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bin, err := os.MkdirTemp("", "ebb-writeback-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(bin)
	ebbBin = filepath.Join(bin, "ebb")
	if err := daemontest.Build(root, ebbBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if home, err = testcluster.Start(ctx, testcluster.Options{Name: "writeback"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer home.Stop()
	if err := reconciler.InstallCRDs(ctx, dynamic.NewForConfigOrDie(home.Config), filepath.Join(root, "charts", "ebb", "crds")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// env is a repository on a real Git server (smart HTTP, basic auth) holding pipelines web
// and api, with its own records namespace. The pipelines' namespaces are prefixed with the
// env's name.
type env struct {
	t       *testing.T
	name    string
	dir     string
	srv     *gitserver.Server
	repoURL string
	repo    *gitserver.WorkTree
	records string
	store   *reconciler.Store
	cs      kubernetes.Interface
	mode    string
	// health, when set, is the URL of the dev stage's health check.
	health string
}

const gitUser, gitPassword = "ebb", "git-pa55word"

func newEnv(t *testing.T, name, mode string) *env {
	t.Helper()
	e := &env{t: t, name: name, dir: t.TempDir(), mode: mode, cs: kubernetes.NewForConfigOrDie(home.Config)}
	ns, err := e.cs.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-" + name + "-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	e.records = ns.Name
	e.store = reconciler.NewStore(dynamic.NewForConfigOrDie(home.Config), e.records)
	e.srv, err = gitserver.New(filepath.Join(e.dir, "server"), gitserver.Options{Username: gitUser, Password: gitPassword})
	require.NoError(t, err)
	t.Cleanup(func() { e.srv.Close() })
	e.repoURL, err = e.srv.CreateRepo("repo")
	require.NoError(t, err)
	e.repo, err = gitserver.Clone(e.srv.AuthURL("repo", gitUser, gitPassword), filepath.Join(e.dir, "work"))
	require.NoError(t, err)
	return e
}

// pipeline returns the files of pipeline p at image tag.
func (e *env) pipeline(p, tag string) map[string]string {
	writeBack := ""
	if e.mode != "" {
		writeBack = "  writeBack: {mode: " + e.mode + "}\n"
	}
	health := ""
	if e.health != "" {
		health = fmt.Sprintf("\n      healthCheck: {url: %q, interval: 100ms, successes: 1, failures: 1000, timeout: 1m}", e.health)
	}
	files := map[string]string{"pipelines/" + p + ".yaml": fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
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
    namespace: %[3]s-%[1]s-dev
    verify:
      rollout: {timeout: 1m}%[5]s
    rollback: true
%[4]s`, p, tag, e.name, writeBack, health)}
	for path, content := range daemontest.AppFiles(p, 2) {
		files[path] = content
	}
	return files
}

// commit commits files with message and pushes them, on top of what the branch holds (a
// write-back commit, say).
func (e *env) commit(message string, files ...map[string]string) string {
	e.t.Helper()
	if _, err := e.repo.Git("ls-remote", "--exit-code", "origin", "main"); err == nil {
		_, err := e.repo.Git("pull", "--quiet", "--ff-only", "origin", "main")
		require.NoError(e.t, err)
	}
	all := map[string]string{}
	for _, f := range files {
		for k, v := range f {
			all[k] = v
		}
	}
	sha, err := e.repo.CommitAndPush(message, all)
	require.NoError(e.t, err)
	return sha
}

// startDaemon runs `ebb run` on the served repository, with the Git credentials in its
// environment, and a configured write-back author.
func (e *env) startDaemon() *daemontest.Daemon {
	e.t.Helper()
	config := filepath.Join(e.dir, "ebb-config.yaml")
	require.NoError(e.t, os.WriteFile(config, []byte(fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
kind: Config
clusters:
- name: dev
  kubeconfig: %s
writeBack:
  author: {name: ebb bot, email: bot@example.com}
`, home.Kubeconfig)), 0o600))
	port, err := proc.FreePort()
	require.NoError(e.t, err)
	return daemontest.Start(e.t, ebbBin, []string{"EBB_GIT_USERNAME=" + gitUser, "EBB_GIT_PASSWORD=" + gitPassword}, "run",
		"--repo", e.repoURL, "--branch", "main", "--config", config,
		"--kubeconfig", home.Kubeconfig, "--namespace", e.records,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--interval", "1s", "--resync", "2s", "--log-level", "debug",
		"--cache-dir", filepath.Join(e.dir, "cache"))
}

// waitWrittenBack waits for the write-back of the execution of pipeline at commit to be
// recorded, and returns the execution.
func (e *env) waitWrittenBack(pipeline, commit string) *reconciler.Execution {
	e.t.Helper()
	x := daemontest.WaitExecution(e.t, e.store, pipeline, commit, reconciler.RollbackCompleted)
	require.Eventually(e.t, func() bool {
		var err error
		x, err = e.store.GetExecution(context.Background(), x.Name)
		return err == nil && x.Annotations[writeback.AnnotationResult] != ""
	}, 60*time.Second, 50*time.Millisecond, "no write-back recorded on %s", x.Spec.DisplayName)
	return x
}

// git runs git in a fresh clone of the server's repository, fetched now.
func (e *env) git(args ...string) string {
	e.t.Helper()
	_, err := e.repo.Git("fetch", "--quiet", "origin", "+refs/heads/*:refs/remotes/origin/*")
	require.NoError(e.t, err)
	out, err := e.repo.Git(args...)
	require.NoError(e.t, err, "git %s", strings.Join(args, " "))
	return out
}

// deployExecutions returns the Deploy executions of pipeline.
func (e *env) deployExecutions(pipeline string) []string {
	e.t.Helper()
	list, err := e.store.ListExecutions(context.Background(), pipeline)
	require.NoError(e.t, err)
	var out []string
	for _, x := range list {
		if x.Spec.Kind == reconciler.KindDeploy {
			out = append(out, x.Spec.DisplayName+" "+string(x.Status.Phase))
		}
	}
	return out
}
