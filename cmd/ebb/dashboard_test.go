package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/daemontest"
	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

// syncBuffer is a buffer a running command writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// started runs ebb in the background; wait returns its exit code once it ends.
func started(t *testing.T, ctx context.Context, args ...string) (out, errOut *syncBuffer, wait func() int) {
	t.Helper()
	out, errOut = &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- execute(ctx, args, strings.NewReader(""), out, errOut) }()
	return out, errOut, func() int {
		select {
		case code := <-done:
			return code
		case <-time.After(60 * time.Second):
			t.Fatalf("ebb %s did not end within 60s; stdout:\n%s\nstderr:\n%s", strings.Join(args, " "), out, errOut)
			return -1
		}
	}
}

// recordsNamespace installs the CRDs and returns a new namespace for records.
func recordsNamespace(t *testing.T) (string, *reconciler.Store) {
	t.Helper()
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(cluster.Config)
	top, err := testcluster.ModuleRoot()
	require.NoError(t, err)
	require.NoError(t, reconciler.InstallCRDs(ctx, dyn, filepath.Join(top, "charts", "ebb", "crds")))
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-watch-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}) })
	return ns.Name, reconciler.NewStore(dyn, ns.Name)
}

func running(t *testing.T, store *reconciler.Store, pipeline string) *reconciler.Execution {
	t.Helper()
	now := metav1.Now()
	x, err := store.CreateExecution(context.Background(), &reconciler.Execution{
		Spec: reconciler.ExecutionSpec{Pipeline: pipeline, Kind: reconciler.KindDeploy, Commit: "0123456789abcdef", CommitMessage: "release 2.0"},
		Status: reconciler.ExecutionStatus{Phase: reconciler.Running, Stage: "dev", StartedAt: &now,
			Stages: []reconciler.StageRecord{{Name: "dev", Status: reconciler.Running, StartedAt: &now,
				Tasks: []reconciler.TaskRecord{{Name: reconciler.TaskVerifyDeployment, Status: reconciler.Running, StartedAt: &now}}}}},
	})
	require.NoError(t, err)
	return x
}

// move writes x's next status, as the reconciler does.
func move(t *testing.T, store *reconciler.Store, x *reconciler.Execution, phase, task reconciler.Status, comment string) {
	t.Helper()
	x.Status.Phase, x.Status.Comment = phase, comment
	x.Status.Stages[0].Status, x.Status.Stages[0].Tasks[0].Status = task, task
	if phase.Terminal() {
		now := metav1.Now()
		x.Status.FinishedAt, x.Status.Stages[0].FinishedAt, x.Status.Stages[0].Tasks[0].FinishedAt = &now, &now, &now
	}
	require.NoError(t, store.UpdateExecution(context.Background(), x))
}

// waitFor waits until out holds n drawings separated by blank lines, the last containing want.
func waitFor(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	require.Eventually(t, func() bool { return strings.Contains(out.String(), want) }, 20*time.Second, 10*time.Millisecond, "never drawn: %q; output:\n%s", want, out)
}

// TestExecutionWatch follows one execution from RUNNING to ROLLBACK_COMPLETED: each status
// is drawn once, in order, and the command exits when the execution ends.
func TestExecutionWatch(t *testing.T) {
	ns, store := recordsNamespace(t)
	x := running(t, store, "web")
	out, errOut, wait := started(t, context.Background(), "execution", "web#1", "--watch", "--kubeconfig", cluster.Kubeconfig, "-n", ns)
	waitFor(t, out, "web#1  RUNNING\n")
	move(t, store, x, reconciler.RollingBack, reconciler.Failed, "rolling back to commit 1111111")
	waitFor(t, out, "web#1  ROLLING_BACK\n")
	move(t, store, x, reconciler.RollbackCompleted, reconciler.Failed, "rolling back to commit 1111111; restored by web_dev_rollback#1")
	require.Equal(t, exitOK, wait(), errOut.String())

	drawings := strings.Split(out.String(), "\n\n")
	require.Len(t, drawings, 3, out.String())
	assert.True(t, strings.HasPrefix(drawings[0], "web#1  RUNNING\n"))
	assert.True(t, strings.HasPrefix(drawings[1], "web#1  ROLLING_BACK\n"))
	assert.True(t, strings.HasPrefix(drawings[2], "web#1  ROLLBACK_COMPLETED\n"))
	assert.Contains(t, drawings[2], "  comment:   rolling back to commit 1111111; restored by web_dev_rollback#1\n")
	assert.Contains(t, drawings[2], "└─ Verify deployment  FAILED")

	code, _, stderr := ebb(t, "execution", "web#9", "--watch", "--kubeconfig", cluster.Kubeconfig, "-n", ns)
	assert.Equal(t, exitError, code)
	assert.Contains(t, stderr, "execution web#9 not found in namespace "+ns)
}

// TestExecutionsWatch redraws the table as executions move and exits once none runs.
func TestExecutionsWatch(t *testing.T) {
	ns, store := recordsNamespace(t)
	a := running(t, store, "web")
	b := running(t, store, "api")
	out, errOut, wait := started(t, context.Background(), "executions", "--watch", "--kubeconfig", cluster.Kubeconfig, "-n", ns)
	waitFor(t, out, "NAME")
	move(t, store, a, reconciler.Completed, reconciler.Completed, "")
	waitFor(t, out, "web#1  web       COMPLETED")
	move(t, store, b, reconciler.Failed, reconciler.Failed, "rollout: ProgressDeadlineExceeded")
	require.Equal(t, exitOK, wait(), errOut.String())

	drawings := strings.Split(out.String(), "\n\n")
	require.Len(t, drawings, 3, out.String())
	row := regexp.MustCompile(`(?m)^(\S+)\s+\S+\s+(\S+)`)
	status := func(d string) map[string]string {
		m := map[string]string{}
		for _, r := range row.FindAllStringSubmatch(d, -1)[1:] {
			m[r[1]] = r[2]
		}
		return m
	}
	assert.Equal(t, map[string]string{"web#1": "RUNNING", "api#1": "RUNNING"}, status(drawings[0]))
	assert.Equal(t, map[string]string{"web#1": "COMPLETED", "api#1": "RUNNING"}, status(drawings[1]))
	assert.Equal(t, map[string]string{"web#1": "COMPLETED", "api#1": "FAILED"}, status(drawings[2]))

	code, _, stderr := ebb(t, "executions", "--watch", "-o", "yaml", "--kubeconfig", cluster.Kubeconfig, "-n", ns)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "--watch draws the table: -o yaml cannot be watched")
}

// TestDashboardCommand serves the page with a kubeconfig, shows the namespace's executions,
// and stops cleanly when interrupted.
func TestDashboardCommand(t *testing.T) {
	ns, store := recordsNamespace(t)
	running(t, store, "web")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, errOut, wait := started(t, ctx, "dashboard", "--listen", "127.0.0.1:0", "--kubeconfig", cluster.Kubeconfig, "--context", "cli", "-n", ns)
	var url string
	require.Eventually(t, func() bool {
		m := regexp.MustCompile(`ebb dashboard: (http://127\.0\.0\.1:\d+/) \(namespace (\S+), as (\S+)\)`).FindStringSubmatch(out.String())
		if m == nil {
			return false
		}
		url = m[1]
		assert.Equal(t, ns, m[2])
		assert.Equal(t, "ebb-admin", m[3])
		return true
	}, 30*time.Second, 20*time.Millisecond, "no address printed; stdout: %s\nstderr: %s", out, errOut)
	resp, err := http.Get(url)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(body), `<a href="/executions/web-1">web#1</a>`)
	// Another name for the loopback address (DNS rebinding) is refused.
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	req.Host = "attacker.example:8090"
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusMisdirectedRequest, resp.StatusCode)
	assert.Contains(t, string(body), `not host "attacker.example:8090"`)
	cancel()
	assert.Equal(t, exitOK, wait(), errOut.String())

	code, _, stderr := ebb(t, "dashboard", "--kubeconfig", cluster.Kubeconfig, "--context", "nope", "-n", ns)
	assert.Equal(t, exitError, code)
	assert.Contains(t, stderr, `context "nope" does not exist`)
}

// TestExecutionWatchOnTerminal runs the built ebb under a real pseudo-terminal (script(1)):
// there each drawing clears the screen first.
func TestExecutionWatchOnTerminal(t *testing.T) {
	script, err := exec.LookPath("script")
	if err != nil {
		t.Fatalf("this test runs ebb under script(1), from util-linux, which is not installed: %v", err)
	}
	top, err := testcluster.ModuleRoot()
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), "ebb")
	require.NoError(t, daemontest.Build(top, bin))
	ns, store := recordsNamespace(t)
	x := running(t, store, "web")

	out := &syncBuffer{}
	cmd := exec.Command(script, "-qec", strings.Join([]string{bin, "execution", "web#1", "--watch", "--kubeconfig", cluster.Kubeconfig, "-n", ns}, " "), "/dev/null")
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	waitFor(t, out, "web#1  RUNNING")
	move(t, store, x, reconciler.Failed, reconciler.Failed, "rollout: ProgressDeadlineExceeded")
	require.NoError(t, cmd.Wait(), out.String())

	const clear = "\x1b[H\x1b[2J"
	drawings := strings.Split(out.String(), clear)
	require.Len(t, drawings, 3, "two drawings, each after clearing the screen: %q", out.String())
	assert.Empty(t, drawings[0])
	assert.True(t, strings.HasPrefix(drawings[1], "web#1  RUNNING"), drawings[1])
	assert.True(t, strings.HasPrefix(drawings[2], "web#1  FAILED"), drawings[2])
}
