package dashboard

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/client-go/dynamic"

	"ebb.dev/ebb/internal/daemontest"
	"ebb.dev/ebb/internal/gitserver"
	"ebb.dev/ebb/internal/proc"
	"ebb.dev/ebb/reconciler"
)

// The browser tests run the real daemon on the test cluster (it is the records' cluster and
// the stage's), drive a real headless Chromium against a dashboard served as a given user, and
// keep screenshots as test artifacts (go test -artifacts keeps them under -outputdir).

var (
	daemonOnce sync.Once
	daemonBin  string
	daemonErr  error
)

// ebbBinary builds cmd/ebb once per test binary.
func ebbBinary(t testing.TB) string {
	t.Helper()
	daemonOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ebb-dashboard-bin-")
		if err != nil {
			daemonErr = err
			return
		}
		daemonBin = filepath.Join(dir, "ebb")
		daemonErr = daemontest.Build(moduleRoot, daemonBin)
	})
	require.NoError(t, daemonErr)
	return daemonBin
}

// app is a Git repository of pipelines and an `ebb run` daemon reconciling it into the test
// cluster, with its records in ns.
type app struct {
	t     *testing.T
	ns    string
	repo  *gitserver.WorkTree
	store *reconciler.Store
	// daemonURL serves the daemon's read-only dashboard (ebb run --dashboard).
	daemonURL string
}

// pipelineFile is a pipeline of the small web app with one stage, dev; approvers, when given,
// gate it.
func pipelineFile(name, tag string, approvers ...string) string {
	gate := ""
	if len(approvers) > 0 {
		gate = fmt.Sprintf("\n    approval: {approvers: [%s], timeout: 1h}", strings.Join(approvers, ", "))
	}
	return fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
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
    namespace: %[3]s-%[1]s%[4]s
    verify:
      rollout: {timeout: 1m}
    rollback: true
`, name, tag, "dash", gate)
}

func newApp(t *testing.T, ns string) *app {
	t.Helper()
	dir := t.TempDir()
	repo, err := gitserver.Init(filepath.Join(dir, "repo"))
	require.NoError(t, err)
	a := &app{t: t, ns: ns, repo: repo, store: reconciler.NewStore(dynamic.NewForConfigOrDie(cluster.Config), ns)}
	config := filepath.Join(dir, "ebb-config.yaml")
	require.NoError(t, os.WriteFile(config, []byte(fmt.Sprintf("apiVersion: ebb.dev/v1alpha1\nkind: Config\nclusters:\n- name: dev\n  kubeconfig: %s\n", cluster.Kubeconfig)), 0o600))
	a.commit("nothing yet", map[string]string{"README": "pipelines of the dashboard tests\n"})
	port, err := proc.FreePort()
	require.NoError(t, err)
	daemontest.Start(t, ebbBinary(t), nil, "run",
		"--repo", "file://"+repo.Dir, "--branch", "main", "--config", config,
		"--kubeconfig", cluster.Kubeconfig, "--namespace", ns,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--dashboard",
		"--interval", "1s", "--resync", "2s", "--cache-dir", filepath.Join(dir, "cache"))
	a.daemonURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	return a
}

func (a *app) commit(message string, files map[string]string) string {
	a.t.Helper()
	sha, err := a.repo.CommitFiles(message, files)
	require.NoError(a.t, err)
	return sha
}

// release commits pipeline name at image tag.
func (a *app) release(name, tag string, approvers ...string) string {
	a.t.Helper()
	files := map[string]string{"pipelines/" + name + ".yaml": pipelineFile(name, tag, approvers...)}
	for path, content := range daemontest.AppFiles(name, 2) {
		files[path] = content
	}
	// The app's image comes from the pipeline's input.
	return a.commit(name+" "+tag, files)
}

// browser starts a headless Chromium for one test. Without Chromium the test fails, saying
// how to install it.
func browser(t testing.TB) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the browser tests need Debian's chromium package, which is not installed: run `make chromium` (apt-get install -y chromium): %v", err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	require.NoError(t, chromedp.Do(ctx), "start chromium")
	return ctx
}

// do runs browser steps with a deadline.
func do(t testing.TB, ctx context.Context, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	require.NoError(t, chromedp.Do(tctx, steps...))
}

// value runs one browser action and returns its value.
func value[T any](t testing.TB, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(tctx, a)
	require.NoError(t, err)
	return v
}

// screenshot saves the page as name.png among the test's artifacts, and returns its path.
func screenshot(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	png := value(t, ctx, chromedp.FullScreenshot(100))
	path := filepath.Join(t.ArtifactDir(), name+".png")
	require.NoError(t, os.WriteFile(path, png, 0o644))
	t.Logf("screenshot %s", path)
	if dst := os.Getenv("EBB_DASHBOARD_SCREENSHOT"); dst != "" && name == "executions" {
		require.NoError(t, os.WriteFile(dst, png, 0o644))
	}
	return path
}

// recordPhases makes the page remember every status each row of the list shows, in order,
// from now on, and marks the document so a reload would show.
const recordPhases = `(function () {
  window.__noReload = true;
  window.__seen = [];
  var note = function () {
    document.querySelectorAll("#rows tr[id]").forEach(function (tr) {
      var v = tr.id + " " + tr.getAttribute("data-phase");
      if (window.__seen.indexOf(v) < 0) window.__seen.push(v);
    });
  };
  note();
  new MutationObserver(note).observe(document.getElementById("main"), {subtree: true, childList: true, attributes: true});
  return true;
})()`

// TestBrowserRollback watches, in Chromium, a release fail and roll back: the open list
// shows its execution go ROLLING_BACK and then ROLLBACK_COMPLETED without a reload, and its
// page shows the failed task and the trigger point.
func TestBrowserRollback(t *testing.T) {
	ns := namespace(t)
	a := newApp(t, ns)
	good := a.release("web", "1.0")
	daemontest.WaitExecution(t, a.store, "web", good, reconciler.Completed)
	base := serve(t, cluster.Config, ns, false)
	ctx := browser(t)

	do(t, ctx, 30*time.Second,
		chromedp.Navigate(base+"/?pipeline=web"),
		chromedp.WaitVisible(chromedp.CSS("#live.on")),
	)
	require.True(t, value(t, ctx, chromedp.Evaluate[bool](recordPhases)))
	bad := a.release("web", "2.0-broken")
	// The page follows the execution of the broken release by itself.
	var seen []string
	require.Eventually(t, func() bool {
		seen = value(t, ctx, chromedp.Evaluate[[]string](`window.__seen`))
		return contains(seen, "x-web-2 ROLLBACK_COMPLETED")
	}, 3*time.Minute, 200*time.Millisecond, "the page never showed web#2 ROLLBACK_COMPLETED")
	assert.True(t, value(t, ctx, chromedp.Evaluate[bool](`window.__noReload === true`)), "the page was not reloaded")
	rolling, done := index(seen, "x-web-2 ROLLING_BACK"), index(seen, "x-web-2 ROLLBACK_COMPLETED")
	assert.True(t, rolling >= 0 && rolling < done, "ROLLING_BACK shows before ROLLBACK_COMPLETED: %v", seen)
	assert.Contains(t, seen, "x-web-dev-rollback-1 COMPLETED", "the rollback's own row appears too")
	assert.Equal(t, "3", value(t, ctx, chromedp.Text(chromedp.CSS("#matching"))), "the count follows the rows")
	x := daemontest.WaitExecution(t, a.store, "web", bad, reconciler.RollbackCompleted)
	time.Sleep(1500 * time.Millisecond) // let the changed rows' highlight fade, for the picture
	screenshot(t, ctx, "executions")

	do(t, ctx, 30*time.Second, chromedp.Navigate(base+"/executions/"+x.Name))
	tasks := value(t, ctx, chromedp.Text(chromedp.CSS(`li.task[data-status="FAILED"]`)))
	trigger := value(t, ctx, chromedp.Text(chromedp.CSS(`.trigger-text`)))
	restored := value(t, ctx, chromedp.Text(chromedp.CSS(`.trigger`)))
	assert.Contains(t, tasks, "Verify deployment")
	assert.Contains(t, tasks, "FAILED")
	assert.Contains(t, trigger, `stage dev, task "Verify deployment" failed at commit `+bad[:7])
	assert.Contains(t, restored, "Restored: commit "+good[:7]+", image registry.example/web:1.0")
	screenshot(t, ctx, "execution")

	do(t, ctx, 30*time.Second, chromedp.Navigate(base+"/pipelines/web"))
	plot := value(t, ctx, chromedp.OuterHTML(chromedp.CSS(`svg.plot`)))
	assert.Contains(t, plot, `class="mark failed"`)
	assert.Contains(t, plot, `class="mark rollback"`)
	screenshot(t, ctx, "pipeline")

	// A pipeline file with a mistake: its page shows where, as the daemon found it.
	a.commit("a pipeline with a typo", map[string]string{"pipelines/typo.yaml": `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata:
  name: typo
spec:
  enabled: true
  strategy: rolling
`})
	var errLines string
	require.Eventually(t, func() bool {
		do(t, ctx, 30*time.Second, chromedp.Navigate(base+"/pipelines/typo"))
		nodes := value(t, ctx, chromedp.Nodes(chromedp.CSS(".errlines"), chromedp.AtLeast(0)))
		if len(nodes) == 0 {
			return false
		}
		errLines = value(t, ctx, chromedp.Text(chromedp.CSS(".errlines")))
		return true
	}, time.Minute, 500*time.Millisecond, "the page of pipeline typo never showed its error")
	assert.Regexp(t, `pipelines/typo\.yaml:7:3: .*strategy`, errLines)
	screenshot(t, ctx, "pipeline-error")
}

// TestBrowserApproval decides a WAITING stage from Chromium: a user who is not an approver is
// refused, in plain words, by the API server's policy; an approver approves, and the open page
// then follows the execution to COMPLETED.
func TestBrowserApproval(t *testing.T) {
	ns := namespace(t)
	waitForPolicy(t, ns)
	grant(t, ns, "approver", decideApprovals, "alice", "mallory")
	a := newApp(t, ns)
	sha := a.release("gate", "1.0", "alice")
	x := daemontest.WaitExecution(t, a.store, "gate", sha, reconciler.Waiting)
	page := "/executions/" + x.Name

	// The daemon's own page (ebb run --dashboard) shows the wait, read-only.
	ctx := browser(t)
	do(t, ctx, 30*time.Second, chromedp.Navigate(a.daemonURL+page), chromedp.WaitVisible(chromedp.CSS(`#approval-dev`)))
	assert.Contains(t, value(t, ctx, chromedp.Text(chromedp.CSS(`#approval-dev`))), "This dashboard is read-only")
	assert.Empty(t, value(t, ctx, chromedp.Nodes(chromedp.CSS(`#approval-dev form`), chromedp.AtLeast(0))), "no approval form")
	resp, err := http.PostForm(a.daemonURL+page+"/decision", url.Values{"stage": {"dev"}, "decision": {"approve"}})
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)

	mallory := serve(t, user(t, "mallory"), ns, false)
	do(t, ctx, 30*time.Second,
		chromedp.Navigate(mallory+page),
		chromedp.WaitVisible(chromedp.CSS(`#approval-dev button.approve`)),
		chromedp.SendKeys(chromedp.CSS(`#comment-dev`), "looks fine to me"),
		chromedp.Click(chromedp.CSS(`#approval-dev button.approve`)),
		chromedp.WaitVisible(chromedp.CSS(`#flash .flash.error`)),
	)
	flash := value(t, ctx, chromedp.Text(chromedp.CSS(`#flash`)))
	assert.Contains(t, flash, "Refused: the API server did not let mallory approve stage dev.")
	assert.Contains(t, flash, "mallory is not an approver of gate#1 stage dev (approvers: alice)")
	screenshot(t, ctx, "approval-refused")
	got, err := a.store.ApprovalFor(context.Background(), x.Name, "dev")
	require.NoError(t, err)
	require.Nil(t, got.Spec.Decision, "mallory's approval was not recorded")

	alice := serve(t, user(t, "alice"), ns, false)
	do(t, ctx, 30*time.Second,
		chromedp.Navigate(alice+page),
		chromedp.WaitVisible(chromedp.CSS(`#live.on`)),
	)
	// With the keyboard only: Tab to the comment box, type, Tab to Approve, press Enter.
	tabTo := func(id string) {
		t.Helper()
		for range 40 {
			if value(t, ctx, chromedp.Evaluate[string](`document.activeElement ? document.activeElement.id : ""`)) == id {
				return
			}
			do(t, ctx, 5*time.Second, chromedp.KeyEvent(kb.Tab))
		}
		t.Fatalf("Tab never reached #%s", id)
	}
	tabTo("comment-dev")
	do(t, ctx, 10*time.Second, chromedp.KeyEvent("dashboards are green"))
	tabTo("approve-dev")
	do(t, ctx, 30*time.Second, chromedp.KeyEvent(kb.Enter), chromedp.WaitVisible(chromedp.CSS(`#flash .flash.ok`)))
	flash = value(t, ctx, chromedp.Text(chromedp.CSS(`#flash`)))
	assert.Contains(t, flash, "Stage dev was approved by alice.")
	// The page follows the execution, approved, to its end without a reload.
	require.True(t, value(t, ctx, chromedp.Evaluate[bool](`window.__noReload = true`)))
	do(t, ctx, 2*time.Minute, chromedp.WaitVisible(chromedp.CSS(`h1 .status.s-completed`)))
	assert.Contains(t, value(t, ctx, chromedp.Text(chromedp.CSS(`h1 .status`))), "COMPLETED")
	assert.True(t, value(t, ctx, chromedp.Evaluate[bool](`window.__noReload === true`)), "the page was not reloaded")
	decision := value(t, ctx, chromedp.Text(chromedp.CSS(`#approval-dev .decision`)))
	assert.Contains(t, decision, "Approved by alice")
	assert.Contains(t, decision, "dashboards are green")
	screenshot(t, ctx, "approval-approved")
	got, err = a.store.ApprovalFor(context.Background(), x.Name, "dev")
	require.NoError(t, err)
	require.NotNil(t, got.Spec.Decision)
	assert.Equal(t, "alice", got.Spec.Decision.By)
}

func contains(list []string, s string) bool { return index(list, s) >= 0 }

func index(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// TestBrowserPhoneAndNoScript reads the pages at a phone's width, where they must not scroll
// sideways, and with JavaScript off, where the list, its filter form and the execution page
// work all the same.
func TestBrowserPhoneAndNoScript(t *testing.T) {
	ns := namespace(t)
	r := seed(t, ns)
	base := serve(t, cluster.Config, ns, false)
	ctx := browser(t)

	do(t, ctx, 30*time.Second, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	for _, page := range []string{"/", "/executions/" + r.bad.Name, "/pipelines/web"} {
		do(t, ctx, 30*time.Second, chromedp.Navigate(base+page), chromedp.WaitVisible(chromedp.CSS("main h1")))
		wide := value(t, ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`))
		assert.False(t, wide, "%s scrolls sideways on a phone", page)
	}
	screenshot(t, ctx, "pipeline-phone")
	do(t, ctx, 30*time.Second, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("main h1")))
	screenshot(t, ctx, "executions-phone")

	// JavaScript off: a fresh tab, scripts disabled before the page loads.
	noJS, cancel := chromedp.NewContext(ctx)
	defer cancel()
	_, err := chromedp.Call(noJS, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
	require.NoError(t, err)
	do(t, noJS, 30*time.Second,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#rows")),
		chromedp.SetValue(chromedp.CSS(`select[name="status"]`), "ROLLBACK_COMPLETED"),
		chromedp.Click(chromedp.CSS(`form.filters button[type="submit"]`)),
		chromedp.WaitNotPresent(chromedp.CSS(`#x-`+r.waiting.Name)),
		chromedp.WaitVisible(chromedp.CSS(`#x-`+r.bad.Name)),
	)
	location := value(t, noJS, chromedp.Location())
	assert.Contains(t, location, "status=ROLLBACK_COMPLETED")
	rows := value(t, noJS, chromedp.Nodes(chromedp.CSS("#rows tr[id]")))
	assert.Len(t, rows, 1, "the filter applied on the server")
	assert.Contains(t, value(t, noJS, chromedp.Text(chromedp.CSS("#live"))), "updates when you reload", "no script ran")
	do(t, noJS, 30*time.Second, chromedp.Click(chromedp.CSS(`#x-`+r.bad.Name+` td.name a`)), chromedp.WaitVisible(chromedp.CSS(".trigger-text")))
	assert.Contains(t, value(t, noJS, chromedp.Text(chromedp.CSS(".trigger-text"))), `task "Verify deployment" failed`)
}
