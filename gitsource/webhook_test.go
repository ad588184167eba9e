package gitsource

import (
	"bytes"
	"context"
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
