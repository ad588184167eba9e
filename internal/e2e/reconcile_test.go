package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/internal/gitserver"
	"ebb.dev/ebb/reconciler"
)

// TestDemoStory runs `make demo`'s program as a newcomer would see it, but exiting at the end.
func TestDemoStory(t *testing.T) {
	out, err := exec.Command(demoBin, "--exit", "--dir", t.TempDir(), "--ebb", ebbBin).CombinedOutput()
	require.NoError(t, err, string(out))
	s := string(out)
	for _, want := range []string{
		"rolling-upgrade-example#1: COMPLETED",
		"rolling-upgrade-example#2: ROLLING_BACK",
		"rolling-upgrade-example#2: ROLLBACK_COMPLETED",
		"rolling-upgrade-example_dev_rollback#1",
		"executions before and after a poll: 3 and 3",
		"rolling-upgrade-example#3: COMPLETED",
		"redeploy of the release verified by rolling-upgrade-example#1",
	} {
		assert.Contains(t, s, want)
	}
}

// TestHealthCheckFailureRollsBack serves a health check that fails for the new image only;
// the repository is served over smart HTTP with basic auth.
func TestHealthCheckFailureRollsBack(t *testing.T) {
	const password = "s3cret-pa55word"
	var e *env
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, err := e.devCS.AppsV1().Deployments(e.name+"-dev").Get(r.Context(), "web", metav1.GetOptions{})
		if err == nil && strings.HasSuffix(d.Spec.Template.Spec.Containers[0].Image, ":2.0") {
			http.Error(w, "unhealthy", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer health.Close()
	e = newEnv(t, "health", envOptions{server: &gitserver.Options{Username: "ebb", Password: password}, healthURL: health.URL})
	d := e.startDaemon()

	good := e.release("1.0", "release 1.0")
	e.waitExecution(good, reconciler.Completed)
	assert.Equal(t, e.imageOf("1.0"), e.image(e.prodCS, "prod"))

	bad := e.release("2.0", "release 2.0")
	x := e.waitExecution(bad, reconciler.RollbackCompleted)
	assert.Contains(t, x.Status.Comment, `task "Verify deployment" failed`)
	assert.Contains(t, x.Status.Comment, "healthCheck: "+health.URL)
	assert.Contains(t, x.Status.Comment, "HTTP 500")
	rb := e.waitNamed("health_dev_rollback#1", reconciler.Completed)
	assert.Equal(t, e.imageOf("1.0"), rb.Status.Image)
	assert.Equal(t, e.imageOf("1.0"), e.image(e.devCS, "dev"))
	assert.Equal(t, e.imageOf("1.0"), e.image(e.prodCS, "prod"), "prod never starts when dev failed")

	lines := d.Lines("")
	require.NotEmpty(t, lines)
	for _, line := range lines {
		require.NotContains(t, line, password, "a credential reached the daemon's log")
	}
}

// TestFirstDeployFailsThenQuarantine: a stage with no known-good release cannot roll back;
// its failed release is not tried again by later polls or unrelated commits, but a commit
// that changes the release is.
func TestFirstDeployFailsThenQuarantine(t *testing.T) {
	e := newEnv(t, "first", envOptions{})
	d := e.startDaemon()

	bad := e.release("1.0-broken", "first release, broken")
	x := e.waitExecution(bad, reconciler.Failed)
	assert.Contains(t, x.Status.Comment, "no known-good release to roll back to")
	assert.Equal(t, "dev", x.Status.Stage)

	require.NoError(t, e.repo.WriteFiles(map[string]string{"README.md": "docs only\n"}))
	unrelated, err := e.repo.Commit("docs: a README")
	require.NoError(t, err)
	e.push()
	d.WaitLog(30*time.Second, "msg", "nothing to run", "commit", unrelated[:7])
	assert.Len(t, e.executions(), 1, "the quarantined release was tried again")

	fixed := e.release("1.1", "release 1.1")
	e.waitExecution(fixed, reconciler.Completed)
	assert.Equal(t, e.imageOf("1.1"), e.image(e.devCS, "dev"))
	assert.Equal(t, e.imageOf("1.1"), e.image(e.prodCS, "prod"))
}

// TestQuarantineAfterRollbackAndRevert: after a rollback, an unrelated commit does not
// re-apply the bad release; a revert is recorded as a redeploy of the verified release.
func TestQuarantineAfterRollbackAndRevert(t *testing.T) {
	e := newEnv(t, "revert", envOptions{})
	d := e.startDaemon()
	good := e.release("1.0", "release 1.0")
	first := e.waitExecution(good, reconciler.Completed)
	bad := e.release("2.0-broken", "release 2.0")
	e.waitExecution(bad, reconciler.RollbackCompleted)
	e.waitNamed("revert_dev_rollback#1", reconciler.Completed)

	require.NoError(t, e.repo.WriteFiles(map[string]string{"README.md": "docs only\n"}))
	unrelated, err := e.repo.Commit("docs: a README")
	require.NoError(t, err)
	d.WaitLog(30*time.Second, "msg", "nothing to run", "commit", unrelated[:7])
	assert.Len(t, e.executions(), 3)
	assert.Equal(t, e.imageOf("1.0"), e.image(e.devCS, "dev"))

	revert, err := e.repo.Revert(bad)
	require.NoError(t, err)
	x := e.waitExecution(revert, reconciler.Completed)
	assert.Contains(t, x.Status.Comment, "redeploy of the release verified by "+first.Spec.DisplayName)
	assert.Contains(t, x.Status.Comment, "reverts "+bad[:7])
}

// TestDriftIsRestored edits a managed Deployment by hand; the next resync restores it.
func TestDriftIsRestored(t *testing.T) {
	e := newEnv(t, "drift", envOptions{})
	d := e.startDaemon()
	good := e.release("1.0", "release 1.0")
	e.waitExecution(good, reconciler.Completed)

	ctx := context.Background()
	dep, err := e.devCS.AppsV1().Deployments("drift-dev").Get(ctx, "web", metav1.GetOptions{})
	require.NoError(t, err)
	dep.Spec.Template.Spec.Containers[0].Image = "registry.example/drift:by-hand"
	_, err = e.devCS.AppsV1().Deployments("drift-dev").Update(ctx, dep, metav1.UpdateOptions{})
	require.NoError(t, err)

	require.Eventually(t, func() bool { return e.image(e.devCS, "dev") == e.imageOf("1.0") }, 30*time.Second, 50*time.Millisecond)
	d.WaitLog(10*time.Second, "msg", "drift restored", "stage", "dev")
	assert.Len(t, e.executions(), 1, "restoring drift is not an execution")
}

// TestKill9 kills the daemon with SIGKILL at several points of a rollout and of a rollback;
// each restarted daemon ends with the right state and history: one execution per commit, one
// rollback, nothing lost.
func TestKill9(t *testing.T) {
	e := newEnv(t, "kill", envOptions{})

	points := []struct {
		name  string
		tag   string
		kv    []string // the log line to kill at; the commit is added
		final reconciler.Status
		image string // dev's image at the end
	}{
		{"dev verify of a good release", "1.0", []string{"msg", "task started", "stage", "dev", "task", reconciler.TaskVerifyDeployment}, reconciler.Completed, "1.0"},
		{"prod update of a good release", "1.1", []string{"msg", "task started", "stage", "prod", "task", reconciler.TaskUpdateDeployment}, reconciler.Completed, "1.1"},
		{"dev update of a broken release", "2.0-broken", []string{"msg", "task started", "stage", "dev", "task", reconciler.TaskUpdateDeployment}, reconciler.RollbackCompleted, "1.1"},
		{"start of a rollback", "3.0-broken", []string{"msg", "execution status", "status", string(reconciler.RollingBack)}, reconciler.RollbackCompleted, "1.1"},
		{"rollback's update", "4.0-broken", []string{"msg", "task started", "execution", "kill_dev_rollback#3", "task", reconciler.TaskUpdateDeployment}, reconciler.RollbackCompleted, "1.1"},
	}
	for _, p := range points {
		d := e.startDaemon()
		sha := e.release(p.tag, "release "+p.tag)
		d.WaitLog(90*time.Second, append(p.kv, "commit", sha[:7])...)
		d.Kill()

		restarted := e.startDaemon()
		x := e.waitExecution(sha, p.final)
		t.Logf("%s: killed, restarted, %s", p.name, describe(x))
		n := 0
		for _, other := range e.executions() {
			if other.Spec.Kind == reconciler.KindDeploy && other.Spec.Commit == sha {
				n++
			}
		}
		assert.Equal(t, 1, n, "%s: executions for commit %s", p.name, sha[:7])
		assert.Equal(t, e.imageOf(p.image), e.image(e.devCS, "dev"), p.name)
		restarted.Kill() // one daemon at a time: the next point starts its own
	}

	var rollbacks []string
	for _, x := range e.executions() {
		if x.Spec.Kind == reconciler.KindRollback {
			rollbacks = append(rollbacks, x.Spec.DisplayName+"="+string(x.Status.Phase))
		}
	}
	assert.Equal(t, []string{"kill_dev_rollback#1=COMPLETED", "kill_dev_rollback#2=COMPLETED", "kill_dev_rollback#3=COMPLETED"}, rollbacks)
}

// TestSIGTERMParksExecution: SIGTERM mid-verification leaves the execution recorded as
// running at its task; the next daemon verifies again and finishes it.
func TestSIGTERMParksExecution(t *testing.T) {
	e := newEnv(t, "term", envOptions{})
	d := e.startDaemon()
	sha := e.release("1.0", "release 1.0")
	d.WaitLog(60*time.Second, "msg", "task started", "stage", "dev", "task", reconciler.TaskVerifyDeployment, "commit", sha[:7])
	require.NoError(t, d.Terminate())

	list := e.executions()
	require.Len(t, list, 1)
	if list[0].Status.Phase != reconciler.Completed {
		assert.Equal(t, reconciler.Running, list[0].Status.Phase, "parked, not failed")
	}
	e.startDaemon()
	e.waitExecution(sha, reconciler.Completed)
	assert.Len(t, e.executions(), 1)
}

// TestTwoReplicasOnlyOneActs runs two daemons with leader election: only the leader runs
// executions; when it dies, the other takes over.
func TestTwoReplicasOnlyOneActs(t *testing.T) {
	e := newEnv(t, "replicas", envOptions{})
	a := e.startDaemon("--leader-elect=true", "--identity", "replica-a")
	a.WaitLog(30*time.Second, "msg", "acting for the shard", "identity", "replica-a")
	b := e.startDaemon("--leader-elect=true", "--identity", "replica-b")
	b.WaitLog(30*time.Second, "msg", "following", "holders", "replica-a")

	sha := e.release("1.0", "release 1.0")
	e.waitExecution(sha, reconciler.Completed)
	assert.Len(t, e.executions(), 1)
	assert.Zero(t, b.CountLogs("msg", "task started"), "the follower acted")
	assert.Zero(t, b.CountLogs("msg", "acting for the shard"))

	a.Kill()
	b.WaitLog(60*time.Second, "msg", "acting for the shard", "identity", "replica-b")
	next := e.release("1.1", "release 1.1")
	e.waitExecution(next, reconciler.Completed)
	assert.Len(t, e.executions(), 2)
}
