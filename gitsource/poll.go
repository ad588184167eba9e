package gitsource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/memory"
)

// PollResult says what a poll found.
type PollResult string

const (
	// PollUnchanged: the remote head is the commit already served; nothing was fetched.
	PollUnchanged PollResult = "unchanged"
	// PollChanged: the head moved (a push, a force-push, a re-tag) and a new snapshot is served.
	PollChanged PollResult = "changed"
	// PollError: the poll failed; the last good snapshot is still served.
	PollError PollResult = "error"
)

// Poll asks the remote for the head of the source's ref (one round trip) and, only when it
// moved, fetches the new commits into the cache. It returns the snapshot now served and
// whether it changed. On failure it returns the last good snapshot (nil before the first
// success) with an *Error, and the source keeps serving that snapshot.
func (s *Source) Poll(ctx context.Context) (*Snapshot, bool, error) {
	s.pollMu.Lock()
	defer s.pollMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()

	snap, changed, err := s.poll(ctx)
	result := PollUnchanged
	switch {
	case err != nil:
		result = PollError
	case changed:
		result = PollChanged
	}
	s.metrics.polls.WithLabelValues(s.opts.Name, string(result)).Inc()
	return s.record(snap, changed, err)
}

// poll is one poll: ls-remote, then fetch and snapshot only if the head moved.
func (s *Source) poll(ctx context.Context) (*Snapshot, bool, error) {
	op := fmt.Sprintf("poll %s %s", s.display, s.remoteRef)
	head, err := s.lsRemote(ctx)
	if err != nil {
		return nil, false, newError(s.redact, "", op, err)
	}
	last := s.Last()
	if last != nil && last.Commit == head.String() {
		return last, false, nil
	}
	snap, err := s.update(ctx, head)
	if err != nil {
		return nil, false, newError(s.redact, "", op, err)
	}
	if last != nil && last.Commit == snap.Commit {
		return last, false, nil
	}
	return snap, true, nil
}

// lsRemote returns the commit the remote ref points at, peeling an annotated tag.
func (s *Source) lsRemote(ctx context.Context) (plumbing.Hash, error) {
	remote := git.NewRemote(memory.NewStorage(), &config.RemoteConfig{Name: "origin", URLs: []string{s.url}})
	refs, err := remote.ListContext(ctx, &git.ListOptions{Auth: s.authMethod(), PeelingOption: git.AppendPeeled})
	if errors.Is(err, transport.ErrEmptyRemoteRepository) {
		// Deleting the only branch leaves the repository empty: for us the ref is gone.
		return plumbing.ZeroHash, fmt.Errorf("%s: %w (the repository has no refs)", s.remoteRef, ErrRefNotFound)
	}
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("list remote refs: %w", err)
	}
	var direct, peeled plumbing.Hash
	for _, r := range refs {
		switch r.Name().String() {
		case s.remoteRef:
			direct = r.Hash()
		case s.remoteRef + "^{}":
			peeled = r.Hash()
		}
	}
	switch {
	case !peeled.IsZero():
		return peeled, nil
	case !direct.IsZero():
		return direct, nil
	}
	return plumbing.ZeroHash, fmt.Errorf("%s: %w", s.remoteRef, ErrRefNotFound)
}

// update makes the cache hold head and returns its snapshot. It fetches only when the
// commit is not in the cache already (a force-push back to an earlier commit needs no fetch),
// and clones again, once, when the cache turns out to be damaged.
func (s *Source) update(ctx context.Context, head plumbing.Hash) (*Snapshot, error) {
	snap, err := s.updateOnce(ctx, head)
	if err == nil || !errors.Is(err, errDamagedCache) {
		return snap, err
	}
	s.log.Warn("git cache is damaged; cloning again", "err", s.redact.redact(err.Error()))
	s.st.mu.Lock()
	err = s.st.resetLocked()
	s.st.mu.Unlock()
	if err != nil {
		return nil, &Error{Kind: KindCache, err: err, msg: s.redact.redact("reset cache: " + err.Error())}
	}
	snap, err = s.updateOnce(ctx, head)
	if errors.Is(err, errDamagedCache) {
		return nil, newError(s.redact, KindCache, "clone again", err)
	}
	return snap, err
}

// errDamagedCache marks a failure of the local clone rather than of the remote.
var errDamagedCache = errors.New("git cache is damaged")

func (s *Source) updateOnce(ctx context.Context, head plumbing.Hash) (*Snapshot, error) {
	localRef := plumbing.ReferenceName(s.localRef)
	s.st.mu.Lock()
	fresh, err := s.st.openLocked()
	if err != nil {
		s.st.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", errDamagedCache, err)
	}
	if fresh {
		s.log.Info("cloning into cache", "dir", s.st.dir)
	}
	have := s.st.hasCommitLocked(head)
	if have && s.opts.Tag == "" {
		// Already here (a force-push back to a commit we saw): move the ref, fetch nothing.
		err = s.st.setRefLocked(localRef, head)
	}
	s.st.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%w: update %s: %w", errDamagedCache, localRef, err)
	}
	if !have || s.opts.Tag != "" {
		start := time.Now()
		err := s.st.fetch(ctx, s.authMethod(), config.RefSpec("+"+s.remoteRef+":"+s.localRef))
		s.metrics.fetchDuration.WithLabelValues(s.opts.Name).Observe(time.Since(start).Seconds())
		if err != nil {
			if isRemoteError(err) {
				return nil, fmt.Errorf("fetch: %w", err)
			}
			return nil, fmt.Errorf("%w: fetch: %w", errDamagedCache, err)
		}
		s.log.Debug("fetched", "duration", time.Since(start))
	}
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	commit, err := s.st.refLocked(localRef)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errDamagedCache, err)
	}
	snap, err := s.st.snapshotLocked(commit, s.remoteRef, s.opts.Path)
	if err != nil && !errors.Is(err, ErrPathNotFound) {
		return nil, fmt.Errorf("%w: %w", errDamagedCache, err)
	}
	return snap, err
}

// record updates status, metrics and logs after a poll, and returns what Poll returns.
func (s *Source) record(snap *Snapshot, changed bool, err error) (*Snapshot, bool, error) {
	now := time.Now()
	s.mu.Lock()
	s.status.LastPoll = now
	s.status.Err = err
	if err != nil {
		s.status.ConsecutiveFailures++
		failures := s.status.ConsecutiveFailures
		last := s.last
		s.mu.Unlock()
		kind := KindOf(err)
		s.metrics.errors.WithLabelValues(s.opts.Name, string(kind)).Inc()
		level := slog.LevelWarn
		if failures > 1 {
			level = slog.LevelDebug // said once per outage; Status and metrics carry the rest
		}
		attrs := []any{"err", err.Error(), "kind", kind, "failures", failures}
		if last != nil {
			attrs = append(attrs, "serving", last.ShortCommit())
		}
		s.log.Log(context.Background(), level, "git poll failed; serving the last good snapshot", attrs...)
		return last, false, err
	}
	recovered := s.status.ConsecutiveFailures > 0
	previous := s.last
	s.status.ConsecutiveFailures = 0
	s.status.LastSuccess = now
	s.status.Commit = snap.Commit
	s.last = snap
	s.mu.Unlock()
	s.metrics.lastSuccess.WithLabelValues(s.opts.Name).Set(float64(now.UnixNano()) / 1e9)
	if recovered {
		s.log.Info("git poll recovered", "commit", snap.ShortCommit())
	}
	if changed {
		if previous != nil {
			s.metrics.commit.DeleteLabelValues(s.opts.Name, previous.Commit)
		}
		s.metrics.commit.WithLabelValues(s.opts.Name, snap.Commit).Set(1)
		s.log.Info("new commit", "commit", snap.ShortCommit(), "author", snap.Author.Name,
			"message", firstLine(snap.Message))
	}
	return snap, changed, nil
}

// fetchBySHA is the refspec that fetches one commit by SHA and keeps it under refs/ebb/.
func fetchBySHA(sha string) config.RefSpec {
	return config.RefSpec(sha + ":refs/ebb/commits/" + sha)
}

func firstLine(s string) string {
	for i, r := range s {
		if r == '\n' {
			return s[:i]
		}
	}
	return s
}
