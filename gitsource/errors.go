package gitsource

import (
	"context"
	"errors"
	"net"
	"net/url"
	"os/exec"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/transport"
	gogithttp "github.com/go-git/go-git/v5/plumbing/transport/http"
)

// ErrorKind says what a caller should do about a Source error.
type ErrorKind string

const (
	// KindUnavailable means the remote could not be reached or failed: retry later, with
	// back-off, and keep serving the last snapshot.
	KindUnavailable ErrorKind = "unavailable"
	// KindAuth means the remote refused the credentials, or the ssh host key is unknown or
	// wrong: a person must fix the Secret or known_hosts.
	KindAuth ErrorKind = "auth"
	// KindNotFound means the repository, branch, tag, path or commit does not exist (a branch
	// may have been deleted): a person must fix it; the last snapshot stays in service.
	KindNotFound ErrorKind = "not_found"
	// KindCache means the local clone was unusable and cloning again failed too.
	KindCache ErrorKind = "cache"
	// KindConfig means the Options are invalid: nothing will work until they are fixed.
	KindConfig ErrorKind = "config"
)

// Sentinel causes, for errors.Is on a *Error.
var (
	// ErrRefNotFound: the remote has no such branch or tag.
	ErrRefNotFound = errors.New("ref not found on the remote")
	// ErrPathNotFound: the commit has no directory at the source's path.
	ErrPathNotFound = errors.New("path not found in commit")
	// ErrCommitNotFound: the commit is neither in the cache nor fetchable from the remote.
	ErrCommitNotFound = errors.New("commit not found")
	// ErrHistoryTruncated: the answer lies beyond the history a shallow clone keeps.
	ErrHistoryTruncated = errors.New("history truncated by the shallow clone")
)

// Error is the error a Source returns. Its message names the operation and the repository by
// its redacted URL, and never contains a credential.
type Error struct {
	// Kind classifies the error for the caller's decision.
	Kind ErrorKind
	// Op says what was being done, e.g. `poll "https://host/repo.git" branch "main"`.
	Op  string
	err error
	msg string
}

// Error returns the redacted message.
func (e *Error) Error() string { return e.msg }

// Unwrap returns the cause, for errors.Is and errors.As.
func (e *Error) Unwrap() error { return e.err }

// newError builds an *Error, classifying err unless kind is set, and redacting the message.
func newError(r *redactor, kind ErrorKind, op string, err error) *Error {
	var inner *Error
	if errors.As(err, &inner) {
		if kind == "" {
			kind = inner.Kind
		}
		err = inner
	}
	if kind == "" {
		kind = classify(err)
	}
	return &Error{Kind: kind, Op: op, err: err, msg: r.redact(op + ": " + err.Error())}
}

// KindOf returns the kind of a Source error, or "" when err is nil or not from a Source.
func KindOf(err error) ErrorKind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return ""
}

// classify decides what a go-git or network error means for the caller.
func classify(err error) ErrorKind {
	switch {
	case errors.Is(err, transport.ErrAuthenticationRequired),
		errors.Is(err, transport.ErrAuthorizationFailed),
		errors.Is(err, transport.ErrInvalidAuthMethod):
		return KindAuth
	case errors.Is(err, transport.ErrRepositoryNotFound),
		errors.Is(err, transport.ErrEmptyRemoteRepository),
		errors.Is(err, ErrRefNotFound),
		errors.Is(err, ErrPathNotFound),
		errors.Is(err, ErrCommitNotFound),
		errors.Is(err, ErrHistoryTruncated):
		return KindNotFound
	}
	msg := err.Error()
	if strings.Contains(msg, "knownhosts:") || strings.Contains(msg, "unable to authenticate") ||
		strings.Contains(msg, "known_hosts") {
		return KindAuth
	}
	return KindUnavailable
}

// isRemoteError reports whether err came from talking to the remote (network, protocol,
// server or auth), rather than from the local cache. Anything else while fetching is taken
// for a damaged cache, which is then cloned again.
func isRemoteError(err error) bool {
	var (
		urlErr  *url.Error
		netErr  net.Error
		httpErr *gogithttp.Err
		execErr *exec.Error
		exitErr *exec.ExitError
	)
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, transport.ErrAuthenticationRequired),
		errors.Is(err, transport.ErrAuthorizationFailed),
		errors.Is(err, transport.ErrInvalidAuthMethod),
		errors.Is(err, transport.ErrRepositoryNotFound),
		errors.Is(err, transport.ErrEmptyRemoteRepository),
		errors.Is(err, transport.ErrEmptyUploadPackRequest),
		errors.As(err, &urlErr), errors.As(err, &netErr), errors.As(err, &httpErr),
		errors.As(err, &execErr), errors.As(err, &exitErr):
		return true
	}
	msg := err.Error()
	return strings.HasPrefix(msg, "ssh:") || strings.Contains(msg, "knownhosts:") ||
		strings.Contains(msg, "unexpected client error") || strings.Contains(msg, "EOF")
}
