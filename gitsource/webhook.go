package gitsource

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

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
	// MaxBodyBytes bounds a payload; larger ones get 413. The payload is hashed as it arrives
	// and never held in memory, so the bound is on time, not memory. Zero: 1 MiB, ample for a
	// push event (GitHub lists at most 20 commits in one).
	MaxBodyBytes int64
	// MaxConcurrent bounds the requests being read and verified at once; more get 503. Zero: 8.
	MaxConcurrent int
	// BodyTimeout bounds the time to receive a payload, so that a client sending a byte now
	// and then cannot hold one of the MaxConcurrent places. Zero: 10s.
	BodyTimeout time.Duration
	// ReplayWindow is how long the delivery ID of each verified request is remembered: a
	// request repeating it within the window is answered 200 and triggers nothing. Zero: one
	// hour.
	ReplayWindow time.Duration
	// Logger receives one line per request (provider, event, delivery, result), never the
	// secret or a signature. Nil discards.
	Logger *slog.Logger
	// Registerer receives ebb_git_webhook_requests_total. Nil registers nothing.
	Registerer prometheus.Registerer
}

// DefaultWebhookOptions returns the options of the zero values, spelled out.
func DefaultWebhookOptions() WebhookOptions {
	return WebhookOptions{MaxBodyBytes: 1 << 20, MaxConcurrent: 8, BodyTimeout: 10 * time.Second, ReplayWindow: time.Hour}
}

// maxRemembered bounds the deliveries a Webhook remembers, whatever its window: past it the
// oldest are forgotten first.
const maxRemembered = 10000

// Webhook is an http.Handler receiving push events from GitHub, GitLab, Gitea and Bitbucket.
// A correctly signed push (or tag push) triggers a poll and gets 202; a ping gets 200; other
// signed events are ignored with 202; a request without a valid signature or token gets 401
// and triggers nothing. The payload is not trusted for anything but "something was pushed":
// the poll asks the remote itself.
//
// A request is judged before its payload is read as far as it can be: a missing or malformed
// signature header, or a wrong GitLab token, is refused unread, and so is a request past
// MaxConcurrent. The payload is then hashed as it arrives, up to MaxBodyBytes, and never
// buffered. A verified request repeating the delivery ID of one seen within the ReplayWindow
// is a replay, such as a host's "redeliver". The delivery header is not signed, so this stops
// repeats, not a determined replay under a new ID; such a replay costs a poll that finds
// nothing new. The payload is not what is remembered: a script may trigger polls with the same
// body every time.
type Webhook struct {
	target   Triggerer
	opts     WebhookOptions
	log      *slog.Logger
	requests *prometheus.CounterVec
	slots    chan struct{}

	mu   sync.Mutex
	seen map[string]time.Time // delivery IDs, when first seen
	fifo []string             // the keys of seen, oldest first
}

// NewWebhook returns a receiver that triggers target on each verified push.
func NewWebhook(target Triggerer, opts WebhookOptions) (*Webhook, error) {
	if len(opts.Secret) == 0 {
		return nil, errors.New("configure git webhook: a secret is required")
	}
	d := DefaultWebhookOptions()
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = d.MaxBodyBytes
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = d.MaxConcurrent
	}
	if opts.BodyTimeout <= 0 {
		opts.BodyTimeout = d.BodyTimeout
	}
	if opts.ReplayWindow <= 0 {
		opts.ReplayWindow = d.ReplayWindow
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ebb_git_webhook_requests_total",
		Help: "Webhook requests, by provider and result (triggered, ping, ignored, replayed, unauthorized, bad_request, too_large, busy).",
	}, []string{"provider", "result"})
	if opts.Registerer != nil {
		var err error
		requests = register(opts.Registerer, requests, &err)
		if err != nil {
			return nil, fmt.Errorf("configure git webhook: register metrics: %w", err)
		}
	}
	return &Webhook{
		target: target, opts: opts, log: opts.Logger.With("component", "gitsource-webhook"), requests: requests,
		slots: make(chan struct{}, opts.MaxConcurrent), seen: map[string]time.Time{},
	}, nil
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
	check, ok := h.signature(ev.provider, r.Header)
	if !ok {
		h.answer(w, r, ev, "unauthorized", http.StatusUnauthorized, "missing or wrong signature")
		return
	}
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	default:
		w.Header().Set("Retry-After", "1")
		h.answer(w, r, ev, "busy", http.StatusServiceUnavailable, "too many webhook requests at once; try again")
		return
	}
	if result, code, msg := h.readPayload(w, r, check); result != "" {
		h.answer(w, r, ev, result, code, msg)
		return
	}
	if h.replayed(ev) {
		h.answer(w, r, ev, "replayed", http.StatusOK, "this delivery was received before; nothing to do")
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

// readPayload hashes the payload as it arrives, within MaxBodyBytes and BodyTimeout, and
// verifies it. It returns the answer to give when it is not verified.
func (h *Webhook) readPayload(w http.ResponseWriter, r *http.Request, check *signatureCheck) (result string, code int, msg string) {
	// Not every ResponseWriter can set a deadline (a test recorder cannot); the server's
	// ReadTimeout still bounds the read then.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(h.opts.BodyTimeout))
	var sink io.Writer = io.Discard
	if check.mac != nil {
		sink = check.mac
	}
	n, err := io.Copy(sink, io.LimitReader(r.Body, h.opts.MaxBodyBytes+1))
	switch {
	case n > h.opts.MaxBodyBytes:
		return "too_large", http.StatusRequestEntityTooLarge, fmt.Sprintf("payload over %d bytes", h.opts.MaxBodyBytes)
	case err != nil:
		return "bad_request", http.StatusBadRequest, "read payload"
	}
	if check.mac != nil && !hmac.Equal(check.mac.Sum(nil), check.want) {
		return "unauthorized", http.StatusUnauthorized, "missing or wrong signature"
	}
	return "", 0, ""
}

// replayed reports whether a verified request repeats the delivery ID of one seen within the
// window, and remembers the ID. A request without one is never a replay.
func (h *Webhook) replayed(ev webhookEvent) bool {
	if ev.delivery == "" {
		return false
	}
	key := string(ev.provider) + " " + ev.delivery
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.forget(now)
	if _, ok := h.seen[key]; ok {
		return true
	}
	h.seen[key] = now
	h.fifo = append(h.fifo, key)
	return false
}

// forget drops what is older than the window, and the oldest beyond maxRemembered.
func (h *Webhook) forget(now time.Time) {
	drop := 0
	for drop < len(h.fifo) && (len(h.fifo)-drop > maxRemembered || now.Sub(h.seen[h.fifo[drop]]) > h.opts.ReplayWindow) {
		delete(h.seen, h.fifo[drop])
		drop++
	}
	h.fifo = h.fifo[drop:]
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

// signatureCheck is what a request's headers say its payload must hash to: the HMAC want,
// computed by mac. Both are nil when the provider authenticates with a token instead (GitLab),
// already checked.
type signatureCheck struct {
	mac  hash.Hash
	want []byte
}

// signature checks the provider's signature header before any of the payload is read: it must
// be present and well-formed (a GitLab token must match, in constant time). It returns how to
// check the payload.
func (h *Webhook) signature(p Provider, hd http.Header) (*signatureCheck, bool) {
	var sig string
	switch p {
	case GitHub:
		sig = hd.Get("X-Hub-Signature-256")
	case Bitbucket:
		sig = hd.Get("X-Hub-Signature")
	case Gitea:
		sig = "sha256=" + hd.Get("X-Gitea-Signature")
	case GitLab:
		token := hd.Get("X-Gitlab-Token")
		if token == "" || subtle.ConstantTimeCompare([]byte(token), h.opts.Secret) != 1 {
			return nil, false
		}
		return &signatureCheck{}, true
	default:
		return nil, false
	}
	want, ok := parseSHA256(sig)
	if !ok {
		return nil, false
	}
	return &signatureCheck{mac: hmac.New(sha256.New, h.opts.Secret), want: want}, true
}

// parseSHA256 reads "sha256=<64 hex digits>" (a SHA-1 signature is refused).
func parseSHA256(header string) ([]byte, bool) {
	hexSig, ok := strings.CutPrefix(header, "sha256=")
	if !ok || len(hexSig) != 2*sha256.Size {
		return nil, false
	}
	sum, err := hex.DecodeString(hexSig)
	return sum, err == nil
}

// SignSHA256 returns "sha256=<hex HMAC-SHA256 of body>", the form of X-Hub-Signature-256;
// for tests and for tools that send webhooks to ebb.
func SignSHA256(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}
