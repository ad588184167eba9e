package gitsource

import (
	"net/url"
	"regexp"
	"strings"
)

// redacted replaces a secret wherever it would otherwise be printed.
const redacted = "[redacted]"

// redactor scrubs a source's credentials from text before it is logged or returned.
type redactor struct {
	secrets []string
}

// newRedactor scrubs each non-empty secret. Short secrets are scrubbed too: a leaked short
// password is still a leaked password.
func newRedactor(secrets ...string) *redactor {
	r := &redactor{}
	for _, s := range secrets {
		s = strings.TrimSpace(s)
		if s != "" {
			r.secrets = append(r.secrets, s)
		}
	}
	return r
}

// redact hides the secrets, and the userinfo of any URL, found in s.
func (r *redactor) redact(s string) string {
	s = redactURLs(s)
	if r != nil {
		for _, secret := range r.secrets {
			s = strings.ReplaceAll(s, secret, redacted)
		}
	}
	return s
}

// userinfoRE finds "scheme://userinfo@" in free text.
var userinfoRE = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*)://([^/@\s"']+)@`)

// redactURLs hides the userinfo of every URL in s (keeping an ssh user name, which is not a
// secret).
func redactURLs(s string) string {
	return userinfoRE.ReplaceAllStringFunc(s, func(m string) string {
		sub := userinfoRE.FindStringSubmatch(m)
		scheme, info := sub[1], sub[2]
		if strings.HasPrefix(strings.ToLower(scheme), "ssh") || strings.EqualFold(scheme, "git+ssh") {
			user, _, hasPassword := strings.Cut(info, ":")
			if !hasPassword {
				return m
			}
			return scheme + "://" + user + ":" + redacted + "@"
		}
		return scheme + "://" + redacted + "@"
	})
}

// RedactURL returns rawURL fit to print. Over https any userinfo is hidden, since a token is
// often given as the user name; over ssh the user name (as in ssh://git@host/repo) is kept and
// a password hidden.
func RedactURL(rawURL string) string { return redactURLs(rawURL) }

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
