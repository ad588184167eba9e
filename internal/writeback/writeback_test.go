package writeback_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"ebb.dev/ebb/internal/daemontest"
	"ebb.dev/ebb/internal/gitserver"
	"ebb.dev/ebb/internal/writeback"
	"ebb.dev/ebb/planner"
	"ebb.dev/ebb/reconciler"
)

// TestWriteBackCommit: one commit breaks web and upgrades api. web rolls back, and the branch
// gets one commit that restores web's files only (api keeps its upgrade), by the configured
// author, naming the execution, stage, reason and commits, with the trailers. The daemon then
// polls its own commit: the ledger records it as web's current release, and nothing new runs,
// then or after another commit.
func TestWriteBackCommit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "wbc", planner.WriteBackCommit)
	d := e.startDaemon()
	good := e.commit("release 1.0", e.pipeline("web", "1.0"), e.pipeline("api", "1.0"))
	daemontest.WaitExecution(t, e.store, "web", good, reconciler.Completed)
	daemontest.WaitExecution(t, e.store, "api", good, reconciler.Completed)
	bad := e.commit("web 2.0 and api 1.1", e.pipeline("web", "2.0-broken"), e.pipeline("api", "1.1"))
	x := e.waitWrittenBack("web", bad)
	daemontest.WaitExecution(t, e.store, "api", bad, reconciler.Completed)

	require.Equal(t, "written", x.Annotations[writeback.AnnotationResult], x.Status.Comment)
	sha := x.Annotations[writeback.AnnotationCommit]
	assert.Equal(t, sha, e.git("rev-parse", "origin/main"), "pushed to the followed branch")
	assert.Equal(t, bad, e.git("rev-parse", sha+"^"), "one commit, on the failed one")
	assert.Equal(t, "pipelines/web.yaml", e.git("diff", "--name-only", bad, sha), "only web's files change")
	assert.Equal(t, e.git("show", good+":pipelines/web.yaml"), e.git("show", sha+":pipelines/web.yaml"))
	assert.Contains(t, e.git("show", sha+":pipelines/api.yaml"), `tag: "1.1"`, "api keeps its change")
	assert.Equal(t, "ebb bot <bot@example.com>", e.git("log", "-1", "--format=%an <%ae>", sha))
	msg := e.git("log", "-1", "--format=%B", sha)
	for _, want := range []string{
		"ebb: roll back pipeline web to commit " + good[:7],
		"Execution web#2 failed at stage dev: stage dev, task \"Verify deployment\" failed at commit " + bad[:7],
		"web_dev_rollback#1 restored the release of commit " + good[:7] + " (image registry.example/web:1.0)",
		"Failed commit:   " + bad, "Restored commit: " + good,
		"Ebb-Execution: web#2\nEbb-Restores: " + good,
	} {
		assert.Contains(t, msg, want)
	}
	assert.Contains(t, x.Status.Comment, "written back to Git: commit "+sha[:7]+" on branch main restores the files of pipeline web to commit "+good[:7])

	// The daemon polls its own commit: in sync with the restored release, recorded, no loop.
	d.WaitLog(30*time.Second, "msg", "write-back commit recorded", "pipeline", "web", "stage", "dev", "commit", sha[:7])
	ledger, err := e.store.Ledger(context.Background(), "web", "dev")
	require.NoError(t, err)
	require.NotNil(t, ledger.Status.Current)
	assert.Equal(t, sha, ledger.Status.Current.Commit, "the ledger names the write-back commit")
	assert.Empty(t, ledger.Status.Current.RestoredBy)
	assert.Equal(t, ledger.Status.LastKnownGood.Hash, ledger.Status.Current.Hash)
	unrelated := e.commit("docs", map[string]string{"README.md": "docs\n"})
	d.WaitLog(30*time.Second, "msg", "nothing to run", "pipeline", "web", "commit", unrelated[:7])
	assert.Equal(t, []string{"web#1 COMPLETED", "web#2 ROLLBACK_COMPLETED"}, e.deployExecutions("web"), "nothing new runs for web")
	assert.Equal(t, []string{"api#1 COMPLETED", "api#2 COMPLETED"}, e.deployExecutions("api"))

	e.requireEvent(x, "WrittenBack", sha[:7])
	assert.Empty(t, d.Lines(gitPassword), "the Git password is in no log line")

	// A daemon killed after its push, before it recorded it, finds its commit again by the
	// trailer: it never pushes twice.
	d.Kill()
	_, err = dynamic.NewForConfigOrDie(home.Config).Resource(reconciler.ExecutionResource).Namespace(e.records).Patch(context.Background(), x.Name,
		types.MergePatchType, []byte(`{"metadata":{"annotations":{"writeback.ebb.dev/result":null,"writeback.ebb.dev/commit":null,"writeback.ebb.dev/branch":null}}}`),
		metav1.PatchOptions{})
	require.NoError(t, err)
	e.startDaemon()
	again := e.waitWrittenBack("web", bad)
	assert.Equal(t, "written", again.Annotations[writeback.AnnotationResult], again.Status.Comment)
	assert.Equal(t, sha, again.Annotations[writeback.AnnotationCommit])
	assert.Equal(t, unrelated, e.git("rev-parse", "origin/main"), "no second write-back commit")
}

// TestWriteBackBranch: mode branch pushes ebb/rollback/web-2 with the change; the followed
// branch is untouched.
func TestWriteBackBranch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "wbb", planner.WriteBackBranch)
	e.startDaemon()
	good := e.commit("release 1.0", e.pipeline("web", "1.0"), e.pipeline("api", "1.0"))
	daemontest.WaitExecution(t, e.store, "web", good, reconciler.Completed)
	bad := e.commit("web 2.0 and api 1.1", e.pipeline("web", "2.0-broken"), e.pipeline("api", "1.1"))
	x := e.waitWrittenBack("web", bad)

	require.Equal(t, "branch", x.Annotations[writeback.AnnotationResult], x.Status.Comment)
	assert.Equal(t, "ebb/rollback/web-2", x.Annotations[writeback.AnnotationBranch])
	sha := x.Annotations[writeback.AnnotationCommit]
	assert.Equal(t, sha, e.git("rev-parse", "origin/ebb/rollback/web-2"))
	assert.Equal(t, bad, e.git("rev-parse", "origin/main"), "the followed branch is untouched")
	assert.Equal(t, bad, e.git("rev-parse", sha+"^"))
	assert.Equal(t, "pipelines/web.yaml", e.git("diff", "--name-only", bad, sha))
	assert.Contains(t, x.Status.Comment, "written back to Git as branch ebb/rollback/web-2 (commit "+sha[:7]+"), for review")
}

// TestWriteBackBranchMoved: the followed branch moves while web rolls back. When the new
// commits leave web's files alone, the write-back lands on the new head; when they changed
// web's files, it is pushed as ebb/rollback/web-2 instead, and the execution says so.
func TestWriteBackBranchMoved(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		touchesWeb bool
	}{{"wbm", false}, {"wbx", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, tc.name, planner.WriteBackCommit)
			// The rollback's health check answers only once the branch moved: fail-fast
			// finds the failure in a second, and the move must come before the write-back.
			var healthy atomic.Bool
			healthy.Store(true)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				if !healthy.Load() {
					http.Error(w, "not yet", http.StatusServiceUnavailable)
				}
			}))
			t.Cleanup(srv.Close)
			e.health = srv.URL
			d := e.startDaemon()
			good := e.commit("release 1.0", e.pipeline("web", "1.0"), e.pipeline("api", "1.0"))
			daemontest.WaitExecution(t, e.store, "web", good, reconciler.Completed)
			healthy.Store(false)
			bad := e.commit("web 2.0", e.pipeline("web", "2.0-broken"))
			d.WaitLog(60*time.Second, "msg", "task started", "execution", "web_dev_rollback#1", "task", reconciler.TaskVerifyDeployment)
			var moved string
			if tc.touchesWeb {
				files := e.pipeline("web", "2.0-broken")
				files["apps/web/deployment.yaml"] += "# tuned by hand\n"
				moved = e.commit("web: a comment", files)
			} else {
				moved = e.commit("api 1.1", e.pipeline("api", "1.1"))
			}
			healthy.Store(true)
			x := e.waitWrittenBack("web", bad)
			sha := x.Annotations[writeback.AnnotationCommit]
			if !tc.touchesWeb {
				require.Equal(t, "written", x.Annotations[writeback.AnnotationResult], x.Status.Comment)
				assert.Equal(t, sha, e.git("rev-parse", "origin/main"))
				assert.Equal(t, moved, e.git("rev-parse", sha+"^"), "rebased onto the new head")
				assert.Equal(t, "pipelines/web.yaml", e.git("diff", "--name-only", moved, sha))
				assert.Contains(t, x.Status.Comment, "(on the new head "+moved[:7]+": the branch moved since commit "+bad[:7]+")")
				return
			}
			require.Equal(t, "branch", x.Annotations[writeback.AnnotationResult], x.Status.Comment)
			assert.Equal(t, moved, e.git("rev-parse", "origin/main"), "the followed branch keeps the person's change")
			assert.Equal(t, sha, e.git("rev-parse", "origin/ebb/rollback/web-2"))
			assert.Equal(t, bad, e.git("rev-parse", sha+"^"), "the change applies on the failed commit")
			assert.Contains(t, x.Status.Comment, "not written back to branch main: it changed the files of pipeline web since commit "+bad[:7]+
				"; pushed branch ebb/rollback/web-2 (commit "+sha[:7]+") instead")
		})
	}
}

// TestWriteBackRefused: the credentials turn read-only, or the branch protected, during the
// rollback. The rollback completes and stands; the failure is in the execution's comment and
// an Event, without the password.
func TestWriteBackRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, want string
		refuse     func(bare string) error
	}{
		{"wbro", "the daemon's Git credentials may not push there (read-only?)", func(bare string) error {
			_, err := gitserver.Git(bare, "config", "http.receivepack", "false")
			return err
		}},
		{"wbpr", "the branch refused the push (protected?)", func(bare string) error {
			hook := filepath.Join(bare, "hooks", "pre-receive")
			return os.WriteFile(hook, []byte("#!/bin/sh\necho 'refs/heads/main is protected' >&2\nexit 1\n"), 0o755)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, tc.name, planner.WriteBackCommit)
			d := e.startDaemon()
			good := e.commit("release 1.0", e.pipeline("web", "1.0"))
			daemontest.WaitExecution(t, e.store, "web", good, reconciler.Completed)
			bad := e.commit("web 2.0", e.pipeline("web", "2.0-broken"))
			d.WaitLog(60*time.Second, "msg", "task started", "execution", "web#2", "task", reconciler.TaskVerifyDeployment)
			require.NoError(t, tc.refuse(e.srv.RepoDir("repo")))

			x := e.waitWrittenBack("web", bad)
			require.Equal(t, "failed", x.Annotations[writeback.AnnotationResult], x.Status.Comment)
			assert.Contains(t, x.Status.Comment, "restored by web_dev_rollback#1; write-back to Git failed: push to branch main of "+e.repoURL)
			assert.Contains(t, x.Status.Comment, tc.want+"; the rollback stands")
			assert.Equal(t, bad, e.git("rev-parse", "origin/main"))
			rb, err := e.store.GetExecution(context.Background(), "web-dev-rollback-1")
			require.NoError(t, err)
			assert.Equal(t, reconciler.Completed, rb.Status.Phase)
			ledger, err := e.store.Ledger(context.Background(), "web", "dev")
			require.NoError(t, err)
			assert.Equal(t, good, ledger.Status.Current.Commit, "the rollback stands")
			e.requireEvent(x, "WriteBackFailed", tc.want)
			assert.NotContains(t, x.Status.Comment, gitPassword)
			assert.Empty(t, d.Lines(gitPassword))
		})
	}
}

// requireEvent checks that x has an Event with reason whose message contains s.
func (e *env) requireEvent(x *reconciler.Execution, reason, s string) {
	e.t.Helper()
	events, err := e.cs.CoreV1().Events(e.records).List(context.Background(), metav1.ListOptions{})
	require.NoError(e.t, err)
	var seen []string
	for _, ev := range events.Items {
		if ev.InvolvedObject.Name == x.Name && ev.Reason == reason {
			seen = append(seen, ev.Message)
			if strings.Contains(ev.Message, s) {
				assert.NotContains(e.t, ev.Message, gitPassword)
				return
			}
		}
	}
	e.t.Errorf("no %s Event on %s containing %q; seen %q", reason, x.Spec.DisplayName, s, seen)
}
