package gitsource

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const webhookSecret = "hook-s3cret-never-printed"

// counter is a Triggerer that counts.
type counter struct{ n atomic.Int64 }

func (c *counter) Trigger() { c.n.Add(1) }

// signedRequest builds a provider's push request for body, signed with secret ("" = unsigned).
func signedRequest(p Provider, event, secret string, body []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/hooks/git", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	switch p {
	case GitHub:
		r.Header.Set("X-GitHub-Event", event)
		r.Header.Set("X-GitHub-Delivery", "d-1")
		if secret != "" {
			r.Header.Set("X-Hub-Signature-256", SignSHA256([]byte(secret), body))
		}
	case Gitea:
		// Gitea sends GitHub's headers too, signed the GitHub way; it is still told apart.
		r.Header.Set("X-Gitea-Event", event)
		r.Header.Set("X-GitHub-Event", event)
		if secret != "" {
			r.Header.Set("X-Gitea-Signature", strings.TrimPrefix(SignSHA256([]byte(secret), body), "sha256="))
		}
	case GitLab:
		r.Header.Set("X-Gitlab-Event", event)
		if secret != "" {
			r.Header.Set("X-Gitlab-Token", secret)
		}
	case Bitbucket:
		r.Header.Set("X-Event-Key", event)
		if secret != "" {
			r.Header.Set("X-Hub-Signature", SignSHA256([]byte(secret), body))
		}
	}
	return r
}

func TestWebhookProviders(t *testing.T) {
	body := []byte(`{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567"}`)
	pushEvents := map[Provider]string{GitHub: "push", Gitea: "push", GitLab: "Push Hook", Bitbucket: "repo:push"}
	for _, p := range []Provider{GitHub, GitLab, Gitea, Bitbucket} {
		tests := []struct {
			name        string
			req         func() *http.Request
			wantCode    int
			wantTrigger bool
			wantResult  string
		}{
			{"good signature", func() *http.Request { return signedRequest(p, pushEvents[p], webhookSecret, body) }, http.StatusAccepted, true, "triggered"},
			{"wrong secret", func() *http.Request { return signedRequest(p, pushEvents[p], "not-the-secret", body) }, http.StatusUnauthorized, false, "unauthorized"},
			{"unsigned", func() *http.Request { return signedRequest(p, pushEvents[p], "", body) }, http.StatusUnauthorized, false, "unauthorized"},
			{"body tampered after signing", func() *http.Request {
				r := signedRequest(p, pushEvents[p], webhookSecret, body)
				r.Body = ioNopCloser(bytes.NewReader(append(bytes.Clone(body), ' ')))
				return r
			}, map[Provider]int{GitLab: http.StatusAccepted}[p] + unauthorizedUnlessGitLab(p), p == GitLab, map[bool]string{true: "triggered", false: "unauthorized"}[p == GitLab]},
			{"other event", func() *http.Request { return signedRequest(p, "issues", webhookSecret, body) }, http.StatusAccepted, false, "ignored"},
		}
		for _, tt := range tests {
			t.Run(string(p)+"/"+tt.name, func(t *testing.T) {
				var c counter
				logs := &syncBuffer{}
				reg := prometheus.NewRegistry()
				o := DefaultWebhookOptions()
				o.Secret = []byte(webhookSecret)
				o.Logger = newTestLogger(logs)
				o.Registerer = reg
				h, err := NewWebhook(&c, o)
				require.NoError(t, err)
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, tt.req())
				assert.Equal(t, tt.wantCode, rec.Code, rec.Body.String())
				assert.Equal(t, tt.wantTrigger, c.n.Load() == 1)
				assert.Equal(t, 1.0, metricValue(t, reg, "ebb_git_webhook_requests_total", map[string]string{"provider": string(p), "result": tt.wantResult}))
				assert.Contains(t, logs.String(), "provider="+string(p))
				assertNoSecrets(t, logs.String(), webhookSecret, "not-the-secret")
			})
		}
	}
}

// unauthorizedUnlessGitLab: GitLab's token does not sign the body, so a changed body still
// passes; every other provider's HMAC catches it.
func unauthorizedUnlessGitLab(p Provider) int {
	if p == GitLab {
		return 0
	}
	return http.StatusUnauthorized
}

func TestWebhookRejects(t *testing.T) {
	o := DefaultWebhookOptions()
	_, err := NewWebhook(&counter{}, o)
	require.ErrorContains(t, err, "a secret is required")

	o.Secret = []byte(webhookSecret)
	o.MaxBodyBytes = 64
	var c counter
	h, err := NewWebhook(&c, o)
	require.NoError(t, err)
	tests := []struct {
		name string
		req  *http.Request
		want int
	}{
		{"GET", httptest.NewRequest(http.MethodGet, "/", nil), http.StatusMethodNotAllowed},
		{"no provider header", httptest.NewRequest(http.MethodPost, "/", strings.NewReader("{}")), http.StatusBadRequest},
		{"too large", signedRequest(GitHub, "push", webhookSecret, bytes.Repeat([]byte("x"), 65)), http.StatusRequestEntityTooLarge},
		{"sha1 signature", func() *http.Request {
			r := signedRequest(GitHub, "push", "", []byte("{}"))
			r.Header.Set("X-Hub-Signature-256", "sha1="+strings.TrimPrefix(SignSHA256([]byte(webhookSecret), []byte("{}")), "sha256="))
			return r
		}(), http.StatusUnauthorized},
		{"github ping", signedRequest(GitHub, "ping", webhookSecret, []byte("{}")), http.StatusOK},
		{"bitbucket ping", signedRequest(Bitbucket, "diagnostics:ping", webhookSecret, []byte("{}")), http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, tt.req)
			assert.Equal(t, tt.want, rec.Code)
		})
	}
	assert.Zero(t, c.n.Load(), "none of these triggers a poll")
}

// TestWebhookTriggersPoll: a push announced by a webhook reaches Run's onChange, though the
// polling interval is an hour.
func TestWebhookTriggersPoll(t *testing.T) {
	f := newFixture(t, true)
	s := f.source(t, func(o *Options) { o.Interval = time.Hour })
	o := DefaultWebhookOptions()
	o.Secret = []byte(webhookSecret)
	o.Logger = newTestLogger(f.logs)
	hook, err := NewWebhook(s, o)
	require.NoError(t, err)
	srv := httptest.NewServer(hook)
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := make(chan *Snapshot, 4)
	go func() { _ = s.Run(ctx, func(s *Snapshot) { changes <- s }) }()
	<-changes

	sha := f.push(t, "Pushed", map[string]string{"pipelines/web.yaml": "pushed"})
	for _, p := range []Provider{GitHub, GitLab, Gitea, Bitbucket} {
		// Unsigned deliveries are refused and trigger nothing.
		req := signedRequest(p, map[Provider]string{GitHub: "push", Gitea: "push", GitLab: "Push Hook", Bitbucket: "repo:push"}[p], "", []byte("{}"))
		resp, err := http.DefaultClient.Do(toClientRequest(t, srv.URL, req))
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	}
	select {
	case snap := <-changes:
		t.Fatalf("an unsigned webhook triggered a poll that found %s", snap.Commit)
	case <-time.After(200 * time.Millisecond):
	}

	req := signedRequest(GitHub, "push", webhookSecret, []byte(`{"ref":"refs/heads/main"}`))
	resp, err := http.DefaultClient.Do(toClientRequest(t, srv.URL, req))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	select {
	case snap := <-changes:
		assert.Equal(t, sha, snap.Commit)
	case <-time.After(time.Minute):
		t.Fatal("the webhook did not trigger a poll")
	}
	assertNoSecrets(t, f.logs.String(), webhookSecret)
}

// toClientRequest turns a server-side test request into one a client can send to url.
func toClientRequest(t *testing.T, url string, r *http.Request) *http.Request {
	t.Helper()
	req, err := http.NewRequest(r.Method, url+r.URL.Path, r.Body)
	require.NoError(t, err)
	req.Header = r.Header.Clone()
	return req
}

// countingBody counts the bytes read from a request body.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// newTestWebhook returns a webhook with the test secret and options changed by edit, its
// trigger counter and its metrics.
func newTestWebhook(t *testing.T, edit func(*WebhookOptions)) (*Webhook, *counter, *prometheus.Registry) {
	t.Helper()
	o := DefaultWebhookOptions()
	o.Secret = []byte(webhookSecret)
	o.Registerer = prometheus.NewRegistry()
	if edit != nil {
		edit(&o)
	}
	var c counter
	h, err := NewWebhook(&c, o)
	require.NoError(t, err)
	return h, &c, o.Registerer.(*prometheus.Registry)
}

// TestWebhookRefusesUnread checks that a request whose signature header is missing or
// malformed, or whose GitLab token is wrong, is refused before a byte of its payload is read:
// an unauthenticated client cannot make the daemon read or hash 10 MiB.
func TestWebhookRefusesUnread(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 10<<20)
	unsigned := func(p Provider, set map[string]string) func() *http.Request {
		return func() *http.Request {
			r := signedRequest(p, map[Provider]string{GitHub: "push", Gitea: "push", GitLab: "Push Hook", Bitbucket: "repo:push"}[p], "", body)
			for k, v := range set {
				r.Header.Set(k, v)
			}
			return r
		}
	}
	sig := strings.TrimPrefix(SignSHA256([]byte(webhookSecret), body), "sha256=")
	tests := []struct {
		name string
		req  func() *http.Request
	}{
		{"github unsigned", unsigned(GitHub, nil)},
		{"github sha1", unsigned(GitHub, map[string]string{"X-Hub-Signature-256": "sha1=" + sig[:40]})},
		{"github not hex", unsigned(GitHub, map[string]string{"X-Hub-Signature-256": "sha256=" + strings.Repeat("z", 64)})},
		{"github short", unsigned(GitHub, map[string]string{"X-Hub-Signature-256": "sha256=" + sig[:62]})},
		{"github the signature in the wrong header", unsigned(GitHub, map[string]string{"X-Hub-Signature": "sha256=" + sig})},
		{"gitea malformed", unsigned(Gitea, map[string]string{"X-Gitea-Signature": "sha256=" + sig})},
		{"bitbucket unsigned", unsigned(Bitbucket, nil)},
		{"gitlab without token", unsigned(GitLab, nil)},
		{"gitlab wrong token", unsigned(GitLab, map[string]string{"X-Gitlab-Token": "not-the-secret"})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, c, reg := newTestWebhook(t, nil)
			r := tt.req()
			var read atomic.Int64
			r.Body = countingBody{r.Body, &read}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			assert.Equal(t, http.StatusUnauthorized, rec.Code)
			assert.Zero(t, read.Load(), "bytes of the payload read")
			assert.Zero(t, c.n.Load())
			assert.Equal(t, 1.0, metricValue(t, reg, "ebb_git_webhook_requests_total", map[string]string{"result": "unauthorized"}))
		})
	}
}

// TestWebhookBodyLimits sends real requests: a signed payload over MaxBodyBytes gets 413 once
// that much was read, no more; a payload that stops arriving gets 400 at BodyTimeout; past
// MaxConcurrent requests being read, the next gets 503 unread, and the held ones still
// complete.
func TestWebhookBodyLimits(t *testing.T) {
	h, c, reg := newTestWebhook(t, func(o *WebhookOptions) {
		o.MaxBodyBytes, o.MaxConcurrent, o.BodyTimeout = 1<<10, 2, 300*time.Millisecond
	})
	var read atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = countingBody{r.Body, &read}
		h.ServeHTTP(w, r)
	}))
	defer srv.Close()
	send := func(r *http.Request) *http.Response {
		t.Helper()
		resp, err := srv.Client().Do(toClientRequest(t, srv.URL, r))
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}

	big := bytes.Repeat([]byte("x"), 64<<10)
	resp := send(signedRequest(GitHub, "push", webhookSecret, big))
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	assert.LessOrEqual(t, read.Load(), int64(1<<10+1), "read no more than the limit")

	// A payload of which a byte arrives, then nothing.
	body := []byte(`{"ref":"refs/heads/main"}`)
	stalled, stall := io.Pipe()
	defer stall.Close()
	req := signedRequest(GitHub, "push", webhookSecret, body)
	req.Body = stalled
	go func() { _, _ = stall.Write(body[:1]) }()
	resp = send(req)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "a stalled payload is cut off")

	// Two requests held while their payloads are being read, then a third.
	var held []*io.PipeWriter
	answers := make(chan int, 2)
	for i := range 2 {
		r := signedRequest(GitHub, "push", webhookSecret, body)
		r.Header.Set("X-GitHub-Delivery", fmt.Sprintf("held-%d", i))
		pr, pw := io.Pipe()
		r.Body = pr
		held = append(held, pw)
		go func() { answers <- send(r).StatusCode }()
	}
	require.Eventually(t, func() bool { return len(h.slots) == 2 }, 10*time.Second, 5*time.Millisecond, "both are being read")
	resp = send(signedRequest(GitHub, "push", webhookSecret, []byte(`{"ref":"refs/heads/other"}`)))
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))
	for _, pw := range held {
		_, _ = pw.Write(body)
		pw.Close()
	}
	assert.Equal(t, []int{http.StatusAccepted, http.StatusAccepted}, []int{<-answers, <-answers})
	assert.Equal(t, int64(2), c.n.Load())
	for result, n := range map[string]float64{"too_large": 1, "bad_request": 1, "busy": 1, "triggered": 2} {
		assert.Equal(t, n, metricValue(t, reg, "ebb_git_webhook_requests_total", map[string]string{"provider": "github", "result": result}), result)
	}
}

// TestWebhookReplays sends real requests: a verified delivery repeated by its delivery ID is
// answered 200 and triggers no poll, within the window and not after it; an unverified
// request is not remembered, and one without an ID (a script's trigger) is never a replay.
func TestWebhookReplays(t *testing.T) {
	h, c, reg := newTestWebhook(t, func(o *WebhookOptions) { o.ReplayWindow = 500 * time.Millisecond })
	srv := httptest.NewServer(h)
	defer srv.Close()
	push := func(p Provider, secret, body, delivery string) int {
		t.Helper()
		r := signedRequest(p, map[Provider]string{GitHub: "push", GitLab: "Push Hook"}[p], secret, []byte(body))
		r.Header.Set(map[Provider]string{GitHub: "X-GitHub-Delivery", GitLab: "X-Gitlab-Event-UUID"}[p], delivery)
		resp, err := srv.Client().Do(toClientRequest(t, srv.URL, r))
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	a, b, d := `{"after":"aaaa"}`, `{"after":"bbbb"}`, `{"after":"dddd"}`
	steps := []struct {
		name                   string
		p                      Provider
		secret, body, delivery string
		code                   int
		triggered              int64
	}{
		{"first delivery", GitHub, webhookSecret, a, "d-1", http.StatusAccepted, 1},
		{"the same again", GitHub, webhookSecret, a, "d-1", http.StatusOK, 1},
		{"its delivery ID with another payload", GitHub, webhookSecret, b, "d-1", http.StatusOK, 1},
		{"its payload under a new delivery ID", GitHub, webhookSecret, a, "d-2", http.StatusAccepted, 2},
		{"unsigned, with an ID to come", GitHub, "", d, "d-3", http.StatusUnauthorized, 2},
		{"that ID, signed", GitHub, webhookSecret, d, "d-3", http.StatusAccepted, 3},
		{"gitlab", GitLab, webhookSecret, a, "u-1", http.StatusAccepted, 4},
		{"gitlab again", GitLab, webhookSecret, a, "u-1", http.StatusOK, 4},
		{"the same ID from another provider", GitLab, webhookSecret, a, "d-1", http.StatusAccepted, 5},
		{"without an ID", GitLab, webhookSecret, a, "", http.StatusAccepted, 6},
		{"without an ID again", GitLab, webhookSecret, a, "", http.StatusAccepted, 7},
	}
	for _, s := range steps {
		assert.Equal(t, s.code, push(s.p, s.secret, s.body, s.delivery), s.name)
		assert.Equal(t, s.triggered, c.n.Load(), s.name)
	}
	assert.Equal(t, 2.0, metricValue(t, reg, "ebb_git_webhook_requests_total", map[string]string{"provider": "github", "result": "replayed"}))
	assert.Equal(t, 1.0, metricValue(t, reg, "ebb_git_webhook_requests_total", map[string]string{"provider": "gitlab", "result": "replayed"}))

	time.Sleep(time.Second) // twice the window
	assert.Equal(t, http.StatusAccepted, push(GitHub, webhookSecret, a, "d-1"), "after the window")
	assert.Equal(t, int64(8), c.n.Load())
}
