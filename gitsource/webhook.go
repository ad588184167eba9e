package gitsource

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Triggerer is what a webhook or a watch pokes when a push happened: a *Source.
type Triggerer interface {
	// Trigger asks for a poll now. It must not block.
	Trigger()
}

// Provider is a Git host whose push webhooks a Webhook understands.
type Provider string

// The providers a Webhook understands, told apart by their event header.
const (
	GitHub    Provider = "github"
	GitLab    Provider = "gitlab"
	Gitea     Provider = "gitea"
	Bitbucket Provider = "bitbucket"
)

// WebhookOptions configure a Webhook.
type WebhookOptions struct {
	// Secret is the shared secret configured at the Git host: the HMAC key of GitHub's
	// X-Hub-Signature-256, Gitea's X-Gitea-Signature and Bitbucket's X-Hub-Signature, and the
	// value of GitLab's X-Gitlab-Token. Required: an unauthenticated receiver would let anyone
	// make ebb poll.
	Secret []byte
	// MaxBodyBytes bounds a payload; larger ones get 413.
	MaxBodyBytes int64
	// Logger receives one line per request (provider, event, delivery, result), never the
	// secret or a signature. Nil discards.
	Logger *slog.Logger
	// Registerer receives ebb_git_webhook_requests_total. Nil registers nothing.
	Registerer prometheus.Registerer
}

// DefaultWebhookOptions returns options with GitHub's 25 MiB payload limit.
func DefaultWebhookOptions() WebhookOptions {
	return WebhookOptions{MaxBodyBytes: 25 << 20}
}

// Webhook is an http.Handler receiving push events from GitHub, GitLab, Gitea and Bitbucket.
// A correctly signed push (or tag push) triggers a poll and gets 202; a ping gets 200; other
// signed events are ignored with 202; a request without a valid signature or token gets 401
// and triggers nothing. The payload is not trusted for anything but "something was pushed":
// the poll asks the remote itself.
type Webhook struct {
	target   Triggerer
	opts     WebhookOptions
	log      *slog.Logger
	requests *prometheus.CounterVec
}

// NewWebhook returns a receiver that triggers target on each verified push.
func NewWebhook(target Triggerer, opts WebhookOptions) (*Webhook, error) {
	if len(opts.Secret) == 0 {
		return nil, errors.New("configure git webhook: a secret is required")
	}
	if opts.MaxBodyBytes <= 0 {
		return nil, errors.New("configure git webhook: MaxBodyBytes must be positive (start from DefaultWebhookOptions)")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ebb_git_webhook_requests_total",
		Help: "Webhook requests, by provider and result (triggered, ping, ignored, unauthorized, bad_request).",
	}, []string{"provider", "result"})
	if opts.Registerer != nil {
		var err error
		requests = register(opts.Registerer, requests, &err)
		if err != nil {
			return nil, fmt.Errorf("configure git webhook: register metrics: %w", err)
		}
	}
	return &Webhook{target: target, opts: opts, log: opts.Logger.With("component", "gitsource-webhook"), requests: requests}, nil
}

// webhookEvent is what a request says about itself, from its headers.
type webhookEvent struct {
	provider Provider
	event    string
	delivery string
}

// ServeHTTP verifies and answers one webhook request.
func (h *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "webhooks are POSTed", http.StatusMethodNotAllowed)
		return
	}
	ev, ok := identify(r.Header)
	if !ok {
		h.answer(w, r, ev, "bad_request", http.StatusBadRequest, "not a GitHub, GitLab, Gitea or Bitbucket webhook")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.opts.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.answer(w, r, ev, "bad_request", http.StatusRequestEntityTooLarge, "payload too large")
			return
		}
		h.answer(w, r, ev, "bad_request", http.StatusBadRequest, "read payload")
		return
	}
	if !h.verify(ev.provider, r.Header, body) {
		h.answer(w, r, ev, "unauthorized", http.StatusUnauthorized, "missing or wrong signature")
		return
	}
	switch kind := classifyEvent(ev); kind {
	case "push":
		h.target.Trigger()
		h.answer(w, r, ev, "triggered", http.StatusAccepted, "poll triggered")
	case "ping":
		h.answer(w, r, ev, "ping", http.StatusOK, "pong")
	default:
		h.answer(w, r, ev, "ignored", http.StatusAccepted, "event ignored")
	}
}

// answer writes the response, counts it and logs it.
func (h *Webhook) answer(w http.ResponseWriter, r *http.Request, ev webhookEvent, result string, code int, msg string) {
	provider := string(ev.provider)
	if provider == "" {
		provider = "unknown"
	}
	h.requests.WithLabelValues(provider, result).Inc()
	level := slog.LevelInfo
	if code >= 400 {
		level = slog.LevelWarn
	}
	h.log.Log(r.Context(), level, "git webhook", "provider", provider, "event", ev.event,
		"delivery", ev.delivery, "result", result, "status", code)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
}

// identify tells the provider from the event header. Gitea also sends GitHub's and Gogs'
// headers for compatibility, so it is asked first.
func identify(hd http.Header) (webhookEvent, bool) {
	switch {
	case hd.Get("X-Gitea-Event") != "":
		return webhookEvent{Gitea, hd.Get("X-Gitea-Event"), hd.Get("X-Gitea-Delivery")}, true
	case hd.Get("X-Gitlab-Event") != "":
		return webhookEvent{GitLab, hd.Get("X-Gitlab-Event"), hd.Get("X-Gitlab-Event-UUID")}, true
	case hd.Get("X-GitHub-Event") != "":
		return webhookEvent{GitHub, hd.Get("X-GitHub-Event"), hd.Get("X-GitHub-Delivery")}, true
	case hd.Get("X-Event-Key") != "":
		return webhookEvent{Bitbucket, hd.Get("X-Event-Key"), hd.Get("X-Request-UUID")}, true
	}
	return webhookEvent{}, false
}

// classifyEvent says whether an event is a push, a ping, or something to ignore.
func classifyEvent(ev webhookEvent) string {
	switch ev.provider {
	case GitHub, Gitea:
		switch ev.event {
		case "push", "create", "delete":
			return "push"
		case "ping":
			return "ping"
		}
	case GitLab:
		switch ev.event {
		case "Push Hook", "Tag Push Hook", "System Hook":
			return "push"
		}
	case Bitbucket:
		switch ev.event {
		case "repo:push", "repo:refs_changed":
			return "push"
		case "diagnostics:ping":
			return "ping"
		}
	}
	return "other"
}

// verify checks the provider's signature or token over body, in constant time.
func (h *Webhook) verify(p Provider, hd http.Header, body []byte) bool {
	switch p {
	case GitHub:
		return h.validHMAC(strings.TrimPrefix(hd.Get("X-Hub-Signature-256"), "sha256="), hd.Get("X-Hub-Signature-256"), body)
	case Bitbucket:
		return h.validHMAC(strings.TrimPrefix(hd.Get("X-Hub-Signature"), "sha256="), hd.Get("X-Hub-Signature"), body)
	case Gitea:
		sig := hd.Get("X-Gitea-Signature")
		return h.validHMAC(sig, "sha256="+sig, body)
	case GitLab:
		token := hd.Get("X-Gitlab-Token")
		return token != "" && subtle.ConstantTimeCompare([]byte(token), h.opts.Secret) == 1
	}
	return false
}

// validHMAC checks a hex HMAC-SHA256 of body; header is the raw header, which must have
// carried the "sha256=" form (a SHA-1 signature is refused).
func (h *Webhook) validHMAC(hexSig, header string, body []byte) bool {
	if !strings.HasPrefix(header, "sha256=") || hexSig == "" {
		return false
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, h.opts.Secret)
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}

// SignSHA256 returns "sha256=<hex HMAC-SHA256 of body>", the form of X-Hub-Signature-256;
// for tests and for tools that send webhooks to ebb.
func SignSHA256(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}
