package gitsource

import (
	"net/url"
	"strings"
	"sync"

	"ebb.dev/ebb/internal/redact"
)

// redacted replaces a secret wherever it would otherwise be printed: the mask every package
// uses.
const redacted = redact.Mask

// redactor scrubs a source's credentials from text before it is logged or returned.
type redactor struct {
	mu      sync.RWMutex // rotated credentials add secrets while others redact
	secrets []string
}

// newRedactor scrubs each non-empty secret. Short secrets are scrubbed too: a leaked short
// password is still a leaked password.
func newRedactor(secrets ...string) *redactor {
	r := &redactor{}
	r.add(secrets...)
	return r
}

// add scrubs more secrets: those of rotated credentials. The old ones stay scrubbed, since
// an error or a cached message may still quote them.
func (r *redactor) add(secrets ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range secrets {
		s = strings.TrimSpace(s)
		if s != "" {
			r.secrets = append(r.secrets, s)
		}
	}
}

// redact hides the secrets, and the user info and query values of any URL, found in s.
func (r *redactor) redact(s string) string {
	s = redact.Text(s)
	if r != nil {
		r.mu.RLock()
		defer r.mu.RUnlock()
		for _, secret := range r.secrets {
			s = strings.ReplaceAll(s, secret, redacted)
		}
	}
	return s
}

// stripUserinfo returns rawURL without userinfo, and the user name and password it held.
func stripUserinfo(rawURL string) (clean, user, password string) {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil || u.Scheme == "" {
		return rawURL, "", ""
	}
	user = u.User.Username()
	password, _ = u.User.Password()
	if strings.HasPrefix(u.Scheme, "ssh") && password == "" {
		// An ssh user name selects the account (git@), it is not a credential.
		return rawURL, "", ""
	}
	u.User = nil
	return u.String(), user, password
}
