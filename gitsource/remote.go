package gitsource

import (
	"github.com/go-git/go-git/v5/plumbing/transport"
)

// Remote is how to reach a source's repository: its URL without credentials, and the go-git
// authentication for it. The write-back pushes with it, using the daemon's credentials exactly
// as the source fetches.
type Remote struct {
	// URL is the repository's URL, any user info removed (it is in Auth).
	URL string
	// Auth authenticates to URL; nil for anonymous access and local repositories.
	Auth transport.AuthMethod
	// Secrets are the credential values, to scrub from messages (Redact).
	Secrets []string
}

// Remote returns how to reach the source's repository.
func (s *Source) Remote() Remote {
	return Remote{URL: s.url, Auth: s.auth, Secrets: s.redact.secrets}
}

// Redact removes the remote's credentials, and the user info and query values of any URL,
// from a message.
func (r Remote) Redact(msg string) string { return newRedactor(r.Secrets...).redact(msg) }
