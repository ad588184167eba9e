// Package redact makes URLs and text that may hold URLs fit to show: in logs, errors, Events,
// execution records and the CLI. A URL's user info (a password, or a token given as the user
// name) and the values of its query (`?token=…`) are replaced by Mask; the query's names stay,
// so a reader still sees which parameter was set. Every package that shows a URL uses this
// one, so what is hidden does not depend on where the URL is shown.
package redact

import (
	"regexp"
	"strings"
)

// Mask replaces what is hidden.
const Mask = "***"

// URL returns raw fit to print. Over http(s) and other schemes the whole user info is hidden,
// since a token is often given as the user name; over ssh the user name (as in
// ssh://git@host/repo) selects an account and is kept, a password is hidden. Every query
// value is hidden, its name kept. raw need not be a valid URL: it is not parsed, so a URL
// the parser would refuse is redacted the same way.
func URL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok || !schemeRE.MatchString(scheme) {
		return redactQuery(raw)
	}
	authEnd := strings.IndexAny(rest, "/?#")
	if authEnd < 0 {
		authEnd = len(rest)
	}
	authority, tail := rest[:authEnd], rest[authEnd:]
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		authority = userinfo(scheme, authority[:at]) + authority[at:]
	}
	return scheme + "://" + authority + redactQuery(tail)
}

// Text returns s with every URL in it redacted as URL does: for error messages and command
// output that may quote a URL, such as Go's `Get "http://…": dial tcp …`.
func Text(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	return urlRE.ReplaceAllStringFunc(s, URL)
}

var (
	schemeRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*$`)
	// urlRE finds a URL in free text: it ends at white space or a quote.
	urlRE = regexp.MustCompile("[a-zA-Z][a-zA-Z0-9+.-]*://[^\\s\"'`<>]+")
)

// userinfo hides the user info of a URL, keeping an ssh user name.
func userinfo(scheme, info string) string {
	s := strings.ToLower(scheme)
	if s == "ssh" || strings.HasPrefix(s, "ssh+") || strings.HasSuffix(s, "+ssh") {
		user, _, hasPassword := strings.Cut(info, ":")
		if !hasPassword {
			return info
		}
		return user + ":" + Mask
	}
	return Mask
}

// redactQuery hides the values of the query in s, the part of a URL from its path on; the
// fragment is kept.
func redactQuery(s string) string {
	q := strings.IndexByte(s, '?')
	if q < 0 {
		return s
	}
	query, fragment := s[q+1:], ""
	if h := strings.IndexByte(query, '#'); h >= 0 {
		query, fragment = query[:h], query[h:]
	}
	parts := strings.Split(query, "&")
	for i, p := range parts {
		if name, value, ok := strings.Cut(p, "="); ok && value != "" {
			parts[i] = name + "=" + Mask
		}
	}
	return s[:q+1] + strings.Join(parts, "&") + fragment
}
