package dashboard

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/reconciler"
)

func get(t *testing.T, client *http.Client, u string) (int, string) {
	t.Helper()
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Get(u)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// rowOrder returns the execution display names in the order the list shows them.
func rowOrder(page string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`<td class="name"><a href="/executions/[^"]+">([^<]+)</a>`).FindAllStringSubmatch(page, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestExecutionsList renders the list from real records: newest first, each column, the
// filters as query parameters, rollbacks and parents linked both ways, URLs redacted.
func TestExecutionsList(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	seed(t, ns)
	base := serve(t, cluster.Config, ns, false)

	code, page := get(t, nil, base+"/")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, []string{"api#1", "web_dev_rollback#1", "web#2", "web#1"}, rowOrder(page), "newest first")
	assert.Contains(t, page, `<span class="status s-rollback-completed"><span class="icon" aria-hidden="true">↩</span> ROLLBACK_COMPLETED</span>`)
	assert.Contains(t, page, `<code title="`+badCommit+`">2222222</code> web 2.0-broken`)
	assert.Contains(t, page, `<code>registry.example/web:2.0-broken</code>`)
	assert.Contains(t, page, `rolled back by <a href="/executions/web-dev-rollback-1">web_dev_rollback#1</a>`)
	assert.Contains(t, page, `rolls back <a href="/executions/web-2">web#2</a>`)
	assert.Contains(t, page, "token=***", "a URL's query value is redacted")
	assert.NotContains(t, page, "hunter2")
	assert.Contains(t, page, `<span id="matching">4</span> of <span id="total">4</span> executions`)

	tests := []struct {
		query string
		want  []string
	}{
		{"pipeline=web", []string{"web_dev_rollback#1", "web#2", "web#1"}},
		{"status=ROLLBACK_COMPLETED", []string{"web#2"}},
		{"pipeline=web&stage=prod", []string{"web#1"}},
		{"stage=prod", []string{"api#1", "web#1"}},
		{"status=WAITING", []string{"api#1"}},
		{"status=FAILED", nil},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			code, page := get(t, nil, base+"/?"+tt.query)
			require.Equal(t, http.StatusOK, code)
			assert.Equal(t, tt.want, rowOrder(page))
			q, _ := url.ParseQuery(tt.query)
			for k, v := range q {
				assert.Regexp(t, `<select name="`+k+`">.*<option selected>`+regexp.QuoteMeta(v[0])+`</option>`, page, "the form keeps the filter")
			}
		})
	}

	t.Run("show more", func(t *testing.T) {
		code, page := get(t, nil, base+"/?limit=2")
		require.Equal(t, http.StatusOK, code)
		assert.Equal(t, []string{"api#1", "web_dev_rollback#1"}, rowOrder(page))
		assert.Contains(t, page, `<a href="/?limit=202">Show more</a>`)
	})
}

// TestExecutionPage shows the stage and task tree, the failed task, the trigger point, the
// restored commit and image, the timeline and the numbered status changes.
func TestExecutionPage(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	r := seed(t, ns)
	base := serve(t, cluster.Config, ns, false)

	code, page := get(t, nil, base+"/executions/"+r.bad.Name)
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, page, `<li class="task" data-status="FAILED"><span class="label">Verify deployment</span> <span class="status s-failed"><span class="icon" aria-hidden="true">✘</span> FAILED</span> <span class="dur">8s</span><div class="msg">rollout: ProgressDeadlineExceeded</div>`)
	assert.Contains(t, page, `<strong>Trigger point:</strong> <span class="trigger-text">stage dev, task &#34;Verify deployment&#34; failed at commit 2222222`)
	assert.Contains(t, page, `<strong>Restored:</strong> commit <code title="`+goodCommit+`">1111111</code>, image <code>registry.example/web:1.0</code>`)
	assert.Contains(t, page, `Rolled back by</dt><dd><a href="/executions/web-dev-rollback-1">web_dev_rollback#1</a>`)
	// Three tasks over 10s: the failed one starts at 20% and takes 80%.
	assert.Contains(t, page, `<svg class="tl-track s-failed" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" aria-label="dev · Verify deployment: FAILED, 8s"><rect x="20.00" width="80.00" height="10" rx="1"/></svg>`)
	assert.Regexp(t, `(?s)<tr><td>1</td><td><span class="status s-running">.*<tr><td>2</td><td><span class="status s-rolling-back">.*<tr><td>3</td><td><span class="status s-rollback-completed">`, page)
	assert.NotContains(t, page, "hunter2")

	code, page = get(t, nil, base+"/executions/"+r.rollback.Name)
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, page, `Rolls back</dt><dd><a href="/executions/web-2">web#2</a>`)
	assert.Contains(t, page, `<span class="trigger-text">rollback of web#2: stage dev, task &#34;Verify deployment&#34; failed`)

	code, page = get(t, nil, base+"/executions/web-99")
	assert.Equal(t, http.StatusNotFound, code)
	assert.Contains(t, page, "execution web-99 not found in namespace "+ns)
}

// TestPipelinePage shows each stage's releases from its ledger, the pipeline's located
// errors, the release plot and DORA figures computed from the executions.
func TestPipelinePage(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	r := seed(t, ns)
	base := serve(t, cluster.Config, ns, false)

	code, page := get(t, nil, base+"/pipelines/web")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, page, `✘ Not ready</span>`[:0]+`✘ Not ready: RenderFailed`)
	assert.Contains(t, page, `<li><code>pipelines/web.yaml:12:5: unknown field &#34;strategy&#34;</code></li>`)
	assert.Contains(t, page, `<li><code>apps/web/deployment.yaml:3:1: mapping values are not allowed here</code></li>`)
	// dev runs the restored release, its known-good is web#1's, web#2's is quarantined.
	dev := page[strings.Index(page, `id="ledger-dev"`):strings.Index(page, `id="ledger-prod"`)]
	assert.Regexp(t, `(?s)<dt>Current</dt><dd><code title="`+goodCommit+`">1111111</code> <code>registry.example/web:1.0</code> by <a href="/executions/web-1">web#1</a> at [^<]+ \(restored by web_dev_rollback#1\)`, dev)
	assert.Regexp(t, `(?s)<dt>Last known-good</dt><dd><code title="`+goodCommit+`">1111111</code> <code>registry.example/web:1.0</code> by <a href="/executions/web-1">web#1</a>`, dev)
	assert.Regexp(t, `(?s)<h4>Quarantined</h4><ul class="releases"><li><code title="`+badCommit+`">2222222</code> <code>registry.example/web:2.0-broken</code> by <a href="/executions/web-2">web#2</a>.*rollout: ProgressDeadlineExceeded`, dev)
	assert.Contains(t, dev, "cluster dev, namespace web-dev")
	// The plot: web#1 in dev and prod, web#2 failed in dev, the rollback in dev.
	assert.Equal(t, 2, strings.Count(page, `class="mark deploy"`))
	assert.Equal(t, 1, strings.Count(page, `class="mark failed"`))
	assert.Equal(t, 1, strings.Count(page, `class="mark rollback"`))
	// DORA: one of two changes failed; restored 4s after the failed task ended.
	assert.Contains(t, page, `<dt>Change failure rate</dt><dd>50%</dd><dd class="sub">1 of 2 ended failed or rolled back</dd>`)
	assert.Contains(t, page, `<dt>Time to restore</dt><dd>`+humanDuration(r.restoredAt.Sub(r.failedAt))+`</dd>`)
	assert.Equal(t, "4s", humanDuration(r.restoredAt.Sub(r.failedAt)))
	assert.Contains(t, page, `<dd class="sub">1 completed over`)

	code, _ = get(t, nil, base+"/pipelines/nope")
	assert.Equal(t, http.StatusNotFound, code)
}

// TestRBACIsTheAccessControl serves the dashboard as users with less: one who may not list
// executions gets an error at start; one who may read executions only sees a plain note
// where ledgers and approvals would be.
func TestRBACIsTheAccessControl(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	r := seed(t, ns)

	s, err := New(Options{Client: dynamicFor(user(t, "nobody")), Namespace: ns})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = s.Start(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `executions.ebb.dev is forbidden: User "nobody" cannot list resource "executions"`)

	grant(t, ns, "executions-only", []rbacv1.PolicyRule{{APIGroups: []string{reconciler.Group}, Resources: []string{"executions"}, Verbs: []string{"get", "list", "watch"}}}, "eve")
	base := serve(t, user(t, "eve"), ns, false)
	code, page := get(t, nil, base+"/pipelines/web")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, page, `Its Pipeline object cannot be read as you: pipelines.ebb.dev &#34;web&#34; is forbidden: User &#34;eve&#34; cannot get resource &#34;pipelines&#34;`)
	assert.Contains(t, page, `Its stage ledgers cannot be read as you: stageledgers.ebb.dev is forbidden: User &#34;eve&#34; cannot list resource &#34;stageledgers&#34;`)
	code, page = get(t, nil, base+"/executions/"+r.waiting.Name)
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, page, `The approvals of this execution cannot be read as you: approvals.ebb.dev is forbidden: User &#34;eve&#34; cannot list resource &#34;approvals&#34;`)
	assert.NotContains(t, page, `<form method="post"`)
}

// sseEvent is one server-sent event.
type sseEvent struct {
	name string
	data map[string]any
}

// events reads the stream at u into a channel until the test ends.
func events(t testing.TB, u string) <-chan sseEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	ch := make(chan sseEvent, 100)
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				ev.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev.data)
			case line == "" && ev.name != "":
				ch <- ev
				ev = sseEvent{}
			}
		}
	}()
	return ch
}

func next(t testing.TB, ch <-chan sseEvent) sseEvent {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no event within 20s")
	}
	return sseEvent{}
}

// TestEvents follows a real status write to the streams of the list (filtered) and of the
// execution's page.
func TestEvents(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	r := seed(t, ns)
	base := serve(t, cluster.Config, ns, false)
	list := events(t, base+"/events?view=list&pipeline=api")
	page := events(t, base+"/events?view=execution&name="+r.waiting.Name)
	other := events(t, base+"/events?view=execution&name="+r.good.Name)

	x, err := r.store.GetExecution(context.Background(), r.waiting.Name)
	require.NoError(t, err)
	x.Status.Phase, x.Status.Comment = reconciler.Running, "approved by alice"
	x.Status.History = append(x.Status.History, reconciler.PhaseChange{Seq: 1, Phase: reconciler.Running, Stage: "prod", At: metav1.Now()})
	require.NoError(t, r.store.UpdateExecution(context.Background(), x))

	ev := next(t, list)
	assert.Equal(t, "row", ev.name)
	assert.Equal(t, "x-"+r.waiting.Name, ev.data["id"])
	assert.Equal(t, "RUNNING", ev.data["phase"])
	assert.EqualValues(t, 1, ev.data["seq"])
	assert.Contains(t, ev.data["html"], `<tr id="x-`+r.waiting.Name+`" data-phase="RUNNING">`)
	assert.Contains(t, ev.data["html"], "approved by alice")

	ev = next(t, page)
	assert.Equal(t, "refresh", ev.name)
	assert.Equal(t, r.waiting.Name, ev.data["name"])

	// The good execution's page hears of a change of its own only.
	g, err := r.store.GetExecution(context.Background(), r.good.Name)
	require.NoError(t, err)
	g.Status.Comment = "noted"
	require.NoError(t, r.store.UpdateExecution(context.Background(), g))
	ev = next(t, other)
	assert.Equal(t, r.good.Name, ev.data["name"])

	// A pipeline's page hears of a change of its Pipeline object (a new error).
	web := events(t, base+"/events?view=pipeline&name=web")
	pipelines, err := r.store.ListPipelines(context.Background())
	require.NoError(t, err)
	require.Len(t, pipelines, 1)
	want := pipelines[0].DeepCopy()
	want.Status.LastError.Message = "pipelines/web.yaml:14:7: unknown field \"replicas\""
	_, err = r.store.SavePipeline(context.Background(), want, &pipelines[0])
	require.NoError(t, err)
	ev = next(t, web)
	assert.Equal(t, "refresh", ev.name)
	assert.Equal(t, "web", ev.data["pipeline"])
}

// TestDecisions approves from the page's form as an approver, and shows the API server's
// refusal plainly for a user who is not one; a form without the CSRF token, and any POST to
// a read-only dashboard, are refused without asking the API server.
func TestDecisions(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	waitForPolicy(t, ns)
	r := seed(t, ns)
	grant(t, ns, "approver", decideApprovals, "alice", "mallory")

	// browser is a client with a cookie jar that has loaded the execution's page.
	browser := func(base string) (*http.Client, string) {
		jar, _ := cookiejar.New(nil)
		c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		code, page := get(t, c, base+"/executions/"+r.waiting.Name)
		require.Equal(t, http.StatusOK, code)
		m := regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`).FindStringSubmatch(page)
		require.NotNil(t, m, "the page has an approval form with a CSRF token")
		return c, m[1]
	}
	post := func(c *http.Client, base string, form url.Values) (int, string, string) {
		resp, err := c.PostForm(base+"/executions/"+r.waiting.Name+"/decision", form)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Location"), string(b)
	}
	form := func(token, decision string) url.Values {
		return url.Values{"csrf": {token}, "stage": {"prod"}, "decision": {decision}, "comment": {"dashboards are green"}}
	}
	undecided := func() {
		a, err := r.store.GetApproval(context.Background(), r.approval.Name)
		require.NoError(t, err)
		require.Nil(t, a.Spec.Decision)
	}

	mallory := serve(t, user(t, "mallory"), ns, false)
	c, token := browser(mallory)
	code, _, page := post(c, mallory, form("0000", "approve"))
	assert.Equal(t, http.StatusForbidden, code)
	assert.Contains(t, page, "The decision was not recorded: the form&#39;s CSRF token does not match")
	code, _, page = post(c, mallory, form(token, "approve"))
	assert.Equal(t, http.StatusForbidden, code)
	assert.Contains(t, page, `<p class="flash error">Refused: the API server did not let mallory approve stage prod. It said: `)
	assert.Contains(t, page, "mallory is not an approver of api#1 stage prod (approvers: alice, group:release-managers)")
	undecided()

	readOnly := serve(t, user(t, "alice"), ns, true)
	_, page = get(t, nil, readOnly+"/executions/"+r.waiting.Name)
	assert.NotContains(t, page, "<form method=\"post\"")
	assert.Contains(t, page, "This dashboard is read-only")
	code, _, page = post(http.DefaultClient, readOnly, form(token, "approve"))
	assert.Equal(t, http.StatusForbidden, code)
	assert.Contains(t, page, "approvals are not possible here")
	undecided()

	alice := serve(t, user(t, "alice"), ns, false)
	c, token = browser(alice)
	code, location, _ := post(c, alice, form(token, "approve"))
	require.Equal(t, http.StatusSeeOther, code)
	assert.Equal(t, "/executions/"+r.waiting.Name+"?decided=prod", location)
	a, err := r.store.GetApproval(context.Background(), r.approval.Name)
	require.NoError(t, err)
	require.NotNil(t, a.Spec.Decision)
	assert.True(t, a.Spec.Decision.Approved)
	assert.Equal(t, "alice", a.Spec.Decision.By)
	assert.Equal(t, "dashboards are green", a.Spec.Decision.Comment)
	_, page = get(t, c, alice+location)
	assert.Contains(t, page, `<p class="flash ok">Stage prod was approved by alice.</p>`)
	assert.Contains(t, page, `✔ Approved by <strong>alice</strong>`)
}

// TestEventsOutliveServerTimeouts streams through a server with the short read and write
// timeouts the daemon's server has for its small requests: the stream still delivers a
// change made after both passed.
func TestEventsOutliveServerTimeouts(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	r := seed(t, ns)
	s, err := New(Options{Client: dynamicFor(cluster.Config), Namespace: ns, ReadOnly: true})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	require.NoError(t, s.Start(ctx))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: s, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()

	stream := events(t, "http://"+l.Addr().String()+"/events?view=execution&name="+r.good.Name)
	time.Sleep(1500 * time.Millisecond) // past both timeouts
	g, err := r.store.GetExecution(context.Background(), r.good.Name)
	require.NoError(t, err)
	g.Status.Comment = "still streaming"
	require.NoError(t, r.store.UpdateExecution(context.Background(), g))
	ev := next(t, stream)
	assert.Equal(t, "refresh", ev.name)
	assert.Equal(t, r.good.Name, ev.data["name"])
}

// TestCompressionAndPolicy: pages and assets are gzipped for a browser that accepts it, the
// event stream never is; every page carries the Content-Security-Policy, and no template
// holds what that policy blocks (an inline style or script, an event handler attribute).
func TestCompressionAndPolicy(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	r := seed(t, ns)
	base := serve(t, cluster.Config, ns, false)
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	for _, path := range []string{"/", "/executions/" + r.bad.Name, "/pipelines/web", "/static/style.css", "/static/app.js"} {
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		require.NoError(t, err)
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := client.Do(req)
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
		assert.Equal(t, "gzip", resp.Header.Get("Content-Encoding"), path)
		assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "script-src 'self'", path)
		gz, err := gzip.NewReader(resp.Body)
		require.NoError(t, err, path)
		body, err := io.ReadAll(gz)
		require.NoError(t, err, path)
		resp.Body.Close()
		assert.NotEmpty(t, body, path)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events?view=list", nil)
	require.NoError(t, err)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Empty(t, resp.Header.Get("Content-Encoding"), "the event stream is not compressed")

	blocked := regexp.MustCompile(`(?i)\sstyle=|\son[a-z]+=|<script>|<style`)
	entries, err := templateFS.ReadDir("templates")
	require.NoError(t, err)
	for _, e := range entries {
		b, err := templateFS.ReadFile("templates/" + e.Name())
		require.NoError(t, err)
		assert.Empty(t, blocked.FindAllString(string(b), -1), "%s holds markup the Content-Security-Policy blocks", e.Name())
	}
}
