package gitsource

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/transport"

	"ebb.dev/ebb/internal/redact"
)

// Source follows one branch or tag of one repository. Create it with New, then either call
// Poll yourself or let Run poll on an interval and on Trigger. All methods are safe for
// concurrent use; polls run one at a time.
type Source struct {
	opts      Options
	url       string // the remote URL without credentials
	display   string // url, redacted, for messages
	remoteRef string
	localRef  string
	ep        *transport.Endpoint
	redact    *redactor
	log       *slog.Logger
	metrics   *metrics
	st        *store

	authMu   sync.Mutex // guards auth and creds, which rotated credentials replace
	auth     transport.AuthMethod
	creds    Credentials
	urlCreds Credentials // from the URL's user info, used while no others are given

	pollMu  sync.Mutex // one poll or fetch at a time
	trigger chan struct{}

	mu     sync.Mutex // guards last and status
	last   *Snapshot
	status Status
}

// Status is how the source is doing, for health endpoints and the daemon's status.
type Status struct {
	// Commit is the SHA of the snapshot being served ("" before the first success).
	Commit string
	// LastPoll and LastSuccess are when a poll last ended and last succeeded.
	LastPoll, LastSuccess time.Time
	// ConsecutiveFailures counts polls failed since the last success.
	ConsecutiveFailures int
	// Err is the last poll's error, nil when it succeeded. While it is set the source keeps
	// serving the last good snapshot.
	Err error
}

// New checks opts and prepares the source. It does no network I/O: the first Poll clones.
func New(opts Options) (*Source, error) {
	if err := opts.validate(); err != nil {
		return nil, newError(newRedactor(opts.Credentials.secrets()...), KindConfig,
			"configure git source "+redact.URL(opts.URL), err)
	}
	clean, user, password := stripUserinfo(opts.URL)
	creds := opts.Credentials
	if opts.CredentialsDir != "" {
		var err error
		if creds, err = CredentialsFromDir(opts.CredentialsDir); err != nil {
			return nil, newError(newRedactor(), KindConfig, "configure git source "+redact.URL(opts.URL), err)
		}
	}
	// A token is often given as the user name of an https URL: scrub both.
	red := newRedactor(append(creds.secrets(), user, password)...)
	display := redact.URL(clean)
	if opts.Name == "" {
		opts.Name = defaultName(clean)
	}
	remoteRef, localRef := opts.refNames()
	s := &Source{
		opts:      opts,
		url:       clean,
		display:   display,
		remoteRef: remoteRef,
		localRef:  localRef,
		redact:    red,
		trigger:   make(chan struct{}, 1),
		urlCreds:  Credentials{Username: user, Password: password},
	}
	s.log = opts.Logger.With("component", "gitsource", "source", opts.Name, "url", display, "ref", remoteRef)
	op := fmt.Sprintf("configure git source %s", display)
	ep, err := transport.NewEndpoint(clean)
	if err != nil {
		return nil, newError(red, KindConfig, op, err)
	}
	sum := sha256.Sum256([]byte(clean + "\x00" + remoteRef))
	dir := filepath.Join(opts.CacheDir, opts.Name+"-"+hex.EncodeToString(sum[:8]))
	if err := os.MkdirAll(opts.CacheDir, 0o700); err != nil {
		return nil, newError(red, KindConfig, op, err)
	}
	s.ep = ep
	if err := s.setCredentials(creds); err != nil {
		return nil, newError(red, KindConfig, op, err)
	}
	if s.metrics, err = newMetrics(opts.Registerer); err != nil {
		return nil, newError(red, KindConfig, op, fmt.Errorf("register metrics: %w", err))
	}
	s.st = &store{dir: dir, url: clean, cacheBytes: opts.ObjectCacheBytes, depth: opts.Depth}
	return s, nil
}

// Name returns the source's name, its metrics label.
func (s *Source) Name() string { return s.opts.Name }

// URL returns the repository URL fit to print: without credentials.
func (s *Source) URL() string { return s.display }

// Last returns the last good snapshot, or nil before the first successful poll.
func (s *Source) Last() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Status returns how the last polls went.
func (s *Source) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Close releases the cache's open files. Snapshots taken before can no longer read files.
func (s *Source) Close() error { return s.st.close() }

// SnapshotAt returns the snapshot of commit sha (a full SHA), such as the last known-good
// commit to roll back to. A commit missing from the cache (after it was cloned again, or one
// never fetched) is fetched from the remote when the server allows fetching by SHA.
func (s *Source) SnapshotAt(ctx context.Context, sha string) (*Snapshot, error) {
	op := fmt.Sprintf("snapshot %s at commit %s", s.display, sha)
	h, err := parseSHA(sha)
	if err != nil {
		return nil, newError(s.redact, KindConfig, op, err)
	}
	if snap, ok, err := s.snapshotIfPresent(h); err != nil || ok {
		if err != nil {
			return nil, newError(s.redact, "", op, err)
		}
		return snap, nil
	}
	s.pollMu.Lock()
	defer s.pollMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	start := time.Now()
	err = s.st.fetch(ctx, s.authMethod(), fetchBySHA(sha))
	s.metrics.fetchDuration.WithLabelValues(s.opts.Name).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, newError(s.redact, KindNotFound, op, fmt.Errorf("%w (fetch by SHA: %w)", ErrCommitNotFound, err))
	}
	snap, ok, err := s.snapshotIfPresent(h)
	switch {
	case err != nil:
		return nil, newError(s.redact, "", op, err)
	case !ok:
		return nil, newError(s.redact, KindNotFound, op, ErrCommitNotFound)
	}
	return snap, nil
}

// snapshotIfPresent builds the snapshot of h if the cache holds it.
func (s *Source) snapshotIfPresent(hash plumbing.Hash) (*Snapshot, bool, error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if _, err := s.st.openLocked(); err != nil {
		return nil, false, err
	}
	if !s.st.hasCommitLocked(hash) {
		return nil, false, nil
	}
	snap, err := s.st.snapshotLocked(hash, "", s.opts.Path)
	return snap, err == nil, err
}
