package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"

	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/internal/redact"
	"ebb.dev/ebb/reconciler"
)

// Headers of a notification.
const (
	// HeaderSignature is "sha256=" and the hex HMAC-SHA256 of the body under the receiver's
	// signing secret, as GitHub signs its webhooks.
	HeaderSignature = "X-Ebb-Signature"
	// HeaderDelivery is <execution>/<seq>: the same when a message is sent again.
	HeaderDelivery = "X-Ebb-Delivery"
)

// defaultMaxBackoff bounds the wait between attempts when the config sets none.
const defaultMaxBackoff = 5 * time.Minute

// receiver is one configured receiver: its queue of execution names, and what it was sent.
type receiver struct {
	n      *Notifier
	name   string
	conf   config.Notification
	events map[reconciler.Status]bool
	log    *slog.Logger
	queue  workqueue.TypedRateLimitingInterface[string]
	// since is when the receiver was first configured: older history is not sent.
	since time.Time

	mu        sync.Mutex
	url       string // resolved from the config or its Secret; never logged
	key       []byte // signing key, from its Secret
	delivered map[string]int
}

func newReceiver(n *Notifier, c config.Notification) *receiver {
	maxBackoff := c.MaxBackoff.Duration
	if maxBackoff <= 0 {
		maxBackoff = defaultMaxBackoff
	}
	r := &receiver{
		n: n, name: c.Name, conf: c, events: map[reconciler.Status]bool{},
		log:       n.log.With("receiver", c.Name),
		url:       c.URL,
		delivered: map[string]int{},
		queue: workqueue.NewTypedRateLimitingQueue(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](n.opts.MinBackoff, max(maxBackoff, n.opts.MinBackoff))),
	}
	for _, e := range c.Events {
		r.events[reconciler.Status(e)] = true
	}
	return r
}

// run works off the receiver's queue: one execution at a time, so its messages keep their
// order; a failed one is tried again after its back-off while the others go on.
func (r *receiver) run(ctx context.Context) {
	for {
		name, quit := r.queue.Get()
		if quit {
			return
		}
		err := r.sync(ctx, name)
		switch {
		case err == nil:
			r.queue.Forget(name)
		case ctx.Err() != nil:
		default:
			r.log.Warn("notification not delivered; trying again", "execution", name,
				"attempt", r.queue.NumRequeues(name)+1, "err", err)
			r.queue.AddRateLimited(name)
		}
		r.queue.Done(name)
	}
}

// forget drops what the receiver remembers of a deleted execution.
func (r *receiver) forget(name string) {
	r.mu.Lock()
	delete(r.delivered, name)
	r.mu.Unlock()
	r.queue.Forget(name)
}

// sync delivers the history entries of one execution that the receiver asks for and was not
// sent yet, oldest first, and records each on the execution as it is delivered.
func (r *receiver) sync(ctx context.Context, name string) error {
	x, ok := r.n.Execution(name)
	if !ok {
		r.forget(name)
		return nil
	}
	if len(r.conf.Pipelines) > 0 && !slices.Contains(r.conf.Pipelines, x.Spec.Pipeline) {
		return nil
	}
	recorded, _ := strconv.Atoi(x.Annotations[AnnotationPrefix+r.name])
	r.mu.Lock()
	done := max(recorded, r.delivered[name])
	r.mu.Unlock()
	history := append([]reconciler.PhaseChange(nil), x.Status.History...)
	sort.Slice(history, func(i, j int) bool { return history[i].Seq < history[j].Seq })
	for _, h := range history {
		if h.Seq <= done || !r.events[h.Phase] || h.At.Time.Before(r.since) {
			continue
		}
		if h.Phase == reconciler.RollingBack && x.Status.Phase == reconciler.RollingBack && x.Status.Rollback == "" {
			// The rollback execution is about to be recorded: wait for it, to name the
			// release it restores. Its record changes the execution, which queues it again.
			break
		}
		body, err := r.body(x, h)
		if err != nil {
			return err
		}
		if err := r.post(ctx, x.Name+"/"+strconv.Itoa(h.Seq), string(h.Phase), body); err != nil {
			r.n.sent.WithLabelValues(r.name, "failed").Inc()
			return err
		}
		r.n.sent.WithLabelValues(r.name, "delivered").Inc()
		r.log.Info("notification delivered", "execution", x.Spec.DisplayName, "status", h.Phase, "seq", h.Seq)
		r.mu.Lock()
		r.delivered[name] = h.Seq
		r.mu.Unlock()
		done = h.Seq
		if err := r.record(ctx, name, h.Seq); err != nil {
			return err
		}
		recorded = h.Seq
	}
	if done > recorded {
		// A record that failed before: write it now.
		return r.record(ctx, name, done)
	}
	return nil
}

// record writes the last delivered sequence number on the execution, touching its metadata
// only.
func (r *receiver) record(ctx context.Context, name string, seq int) error {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
		AnnotationPrefix + r.name: strconv.Itoa(seq),
	}}})
	_, err := r.n.opts.Records.Resource(reconciler.ExecutionResource).Namespace(r.n.opts.Namespace).
		Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	if err != nil {
		return fmt.Errorf("record delivery %d on execution %s: %w", seq, name, err)
	}
	return nil
}

// body renders the message of history entry h of x in the receiver's format.
func (r *receiver) body(x *reconciler.Execution, h reconciler.PhaseChange) ([]byte, error) {
	p := r.n.payload(x, h)
	if r.conf.Format == config.FormatSlack {
		return json.Marshal(slackMessage(p))
	}
	return json.Marshal(p)
}

// post sends body to the receiver, signed when it has a signing secret.
func (r *receiver) post(ctx context.Context, delivery, event string, body []byte) error {
	target, key, err := r.secrets(ctx)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("receiver %q: bad url", r.name)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "ebb")
	req.Header.Set(HeaderDelivery, delivery)
	req.Header.Set("X-Ebb-Event", event)
	if key != nil {
		req.Header.Set(HeaderSignature, Sign(key, body))
	}
	resp, err := r.n.opts.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("post to receiver %q: %s", r.name, hideURL(err, target))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("post to receiver %q: it answered %s", r.name, resp.Status)
	}
	return nil
}

// secrets returns the receiver's URL and signing key, reading their Secrets once.
func (r *receiver) secrets(ctx context.Context) (string, []byte, error) {
	r.mu.Lock()
	target, key := r.url, r.key
	r.mu.Unlock()
	if target == "" {
		v, err := r.conf.URLSecret.Read(ctx, r.n.opts.Home)
		if err != nil {
			return "", nil, fmt.Errorf("receiver %q: url: %w", r.name, err)
		}
		target = strings.TrimSpace(string(v))
		if u, err := url.Parse(target); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", nil, fmt.Errorf("receiver %q: the Secret's url is not an http:// or https:// URL", r.name)
		}
	}
	if key == nil && r.conf.SigningSecret != nil {
		v, err := r.conf.SigningSecret.Read(ctx, r.n.opts.Home)
		if err != nil {
			return "", nil, fmt.Errorf("receiver %q: signing secret: %w", r.name, err)
		}
		key = bytes.TrimSpace(v)
	}
	r.mu.Lock()
	r.url, r.key = target, key
	r.mu.Unlock()
	return target, key, nil
}

// Sign returns the signature header value of body under key: "sha256=<hex HMAC-SHA256>".
func Sign(key, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// hideURL returns err's message without the receiver's URL, which may hold a token in its
// path (Slack's do): Go's client errors quote it.
func hideURL(err error, target string) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	msg := strings.ReplaceAll(err.Error(), target, "<url>")
	return anyURL.ReplaceAllString(redact.Text(msg), "<url>")
}

// anyURL finds any other URL in an error, such as the target of a redirect.
var anyURL = regexp.MustCompile("[a-zA-Z][a-zA-Z0-9+.-]*://[^\\s\"'`<>]+")
