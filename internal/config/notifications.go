package config

import (
	"context"
	"fmt"
	"net/url"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/planner/strictyaml"
	"ebb.dev/ebb/reconciler"
)

// Notification is one receiver of messages about executions: a webhook that hears of the
// statuses it asks for. docs/install.md describes it.
type Notification struct {
	// Name identifies the receiver in metrics, logs and the delivery record on each execution
	// (annotation notify.ebb.dev/<name>); a DNS label.
	Name string `json:"name"`
	// URL is where the messages are posted. Exactly one of URL and URLSecret is set; a URL
	// holding a token belongs in a Secret.
	URL string `json:"url,omitempty"`
	// URLSecret names the key of a Secret, in the daemon's own cluster, that holds the URL.
	URLSecret *SecretKey `json:"urlSecret,omitempty"`
	// Format is json (ebb's own payload, the default) or slack (an incoming-webhook message).
	Format string `json:"format,omitempty"`
	// Events are the execution statuses that are sent, e.g. ROLLING_BACK, ROLLBACK_COMPLETED.
	Events []string `json:"events"`
	// Pipelines, when set, limits the messages to these pipelines.
	Pipelines []string `json:"pipelines,omitempty"`
	// SigningSecret, when set, names the key of a Secret whose value signs each body:
	// header X-Ebb-Signature: sha256=<hex HMAC-SHA256 of the body>.
	SigningSecret *SecretKey `json:"signingSecret,omitempty"`
	// MaxBackoff bounds the wait between attempts to deliver to a receiver that fails; the
	// wait doubles from a second. Default 5m.
	MaxBackoff Duration `json:"maxBackoff,omitempty"`
}

// Notification formats.
const (
	FormatJSON  = "json"
	FormatSlack = "slack"
)

// notificationEvents are the statuses a receiver may ask for.
var notificationEvents = []reconciler.Status{
	reconciler.Queued, reconciler.Running, reconciler.Waiting, reconciler.Completed, reconciler.Failed,
	reconciler.Canceled, reconciler.RollingBack, reconciler.RollbackCompleted, reconciler.RollbackFailed,
}

// WriteBack configures the commits ebb writes to Git after a rollback, for pipelines with
// spec.writeBack (docs/pipelines.md).
type WriteBack struct {
	// Author of the write-back commits; default "ebb" <ebb@ebb.dev>.
	Author Author `json:"author"`
}

// Author is a commit author.
type Author struct {
	Name  string `json:"name"`
	Email string `json:"email"`
}

// CommitAuthor returns the configured author, with the defaults for what is not set.
func (w WriteBack) CommitAuthor() Author {
	a := w.Author
	if a.Name == "" {
		a.Name = "ebb"
	}
	if a.Email == "" {
		a.Email = "ebb@ebb.dev"
	}
	return a
}

// validateNotifications checks the receivers. A URL is never quoted in a message: it may hold
// a token.
func (c *Config) validateNotifications(errorf func(path, format string, args ...any), fields *strictyaml.Fields) {
	seen := map[string]bool{}
	for i, n := range c.Notifications {
		at := fmt.Sprintf("notifications[%d]", i)
		switch {
		case fields.Failed(at + ".name"):
		case n.Name == "":
			errorf(at, "missing required field \"name\" in %s", at)
		case len(validation.IsDNS1123Label(n.Name)) > 0:
			errorf(at+".name", "bad receiver name %q: use lowercase letters, digits and '-'", n.Name)
		case seen[n.Name]:
			errorf(at+".name", "duplicate receiver name %q", n.Name)
		}
		seen[n.Name] = true
		who := fmt.Sprintf("receiver %q", n.Name)
		if n.Name == "" {
			who = at
		}
		switch {
		case (n.URL == "") == (n.URLSecret == nil):
			errorf(at, "%s needs exactly one of url and urlSecret", who)
		case n.URL != "" && !fields.Failed(at+".url"):
			if u, err := url.Parse(n.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				errorf(at+".url", "%s: url must be an http:// or https:// URL", who)
			}
		}
		if n.Format != "" && n.Format != FormatJSON && n.Format != FormatSlack && !fields.Failed(at+".format") {
			errorf(at+".format", "%s: format must be %q or %q, got %q", who, FormatJSON, FormatSlack, n.Format)
		}
		if len(n.Events) == 0 && !fields.Failed(at+".events") {
			errorf(at, "%s: missing required field \"events\" (statuses such as ROLLING_BACK, ROLLBACK_COMPLETED)", who)
		}
		for j, e := range n.Events {
			if !slices.Contains(notificationEvents, reconciler.Status(e)) {
				errorf(fmt.Sprintf("%s.events[%d]", at, j), "%s: unknown event %q: want one of %v", who, e, notificationEvents)
			}
		}
		for _, ref := range []struct {
			field string
			key   *SecretKey
		}{{"urlSecret", n.URLSecret}, {"signingSecret", n.SigningSecret}} {
			if ref.key == nil {
				continue
			}
			for _, f := range []struct{ name, value string }{{"namespace", ref.key.Namespace}, {"name", ref.key.Name}, {"key", ref.key.Key}} {
				if f.value == "" && !fields.Failed(at+"."+ref.field+"."+f.name) {
					errorf(at+"."+ref.field, "missing required field %q in %s.%s", f.name, at, ref.field)
				}
			}
		}
	}
}

// Read returns the value of the Secret key through home, a client of the daemon's cluster.
// The error names the Secret and the key, never a value.
func (k *SecretKey) Read(ctx context.Context, home kubernetes.Interface) ([]byte, error) {
	secret, err := home.CoreV1().Secrets(k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read Secret %s/%s: %w", k.Namespace, k.Name, err)
	}
	v, ok := secretValue(secret, k.Key)
	if !ok {
		return nil, fmt.Errorf("Secret %s/%s has no key %q", k.Namespace, k.Name, k.Key)
	}
	return v, nil
}
