package gitsource

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// revertRE matches the line `git revert` writes: "This reverts commit <sha>."
var revertRE = regexp.MustCompile(`(?m)^This reverts commit ([0-9a-fA-F]{7,64})\.?\s*$`)

// RevertedCommits returns the SHAs a commit message says it reverts, in order, from git's
// "This reverts commit <sha>." lines.
func RevertedCommits(message string) []string {
	var out []string
	for _, m := range revertRE.FindAllStringSubmatch(message, -1) {
		out = append(out, strings.ToLower(m[1]))
	}
	return out
}

// RevertsCommit reports whether snap says it reverts commit sha. Either may be abbreviated
// (at least 7 characters), as git allows in messages.
func (s *Snapshot) RevertsCommit(sha string) bool {
	return revertsCommit(s.Reverts, sha)
}

func revertsCommit(reverted []string, sha string) bool {
	sha = strings.ToLower(sha)
	if len(sha) < 7 {
		return false
	}
	for _, r := range reverted {
		if strings.HasPrefix(r, sha) || strings.HasPrefix(sha, r) {
			return true
		}
	}
	return false
}

// Reverts reports whether commit says it reverts commit x (git's "This reverts commit
// <sha>." line). commit must be in the cache.
func (s *Source) Reverts(ctx context.Context, commit, x string) (bool, error) {
	snap, err := s.SnapshotAt(ctx, commit)
	if err != nil {
		return false, err
	}
	return snap.RevertsCommit(x), nil
}

// IsAncestor reports whether commit a is an ancestor of commit b, counting a commit as its own
// ancestor, as `git merge-base --is-ancestor` does. Both must be in the cache (every commit a
// snapshot was taken at is). It walks b's history, stopping when ctx is done.
func (s *Source) IsAncestor(ctx context.Context, a, b string) (bool, error) {
	op := fmt.Sprintf("is %.12s an ancestor of %.12s in %s", a, b, s.display)
	ha, err := parseSHA(a)
	if err != nil {
		return false, newError(s.redact, KindConfig, op, err)
	}
	hb, err := parseSHA(b)
	if err != nil {
		return false, newError(s.redact, KindConfig, op, err)
	}
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if _, err := s.st.openLocked(); err != nil {
		return false, newError(s.redact, KindCache, op, err)
	}
	if !s.st.hasCommitLocked(ha) {
		return false, newError(s.redact, KindNotFound, op, fmt.Errorf("commit %s: %w", a, ErrCommitNotFound))
	}
	seen := map[plumbing.Hash]bool{hb: true}
	queue := []plumbing.Hash{hb}
	truncated := false
	for len(queue) > 0 {
		if len(seen)%256 == 0 {
			if err := ctx.Err(); err != nil {
				return false, newError(s.redact, KindUnavailable, op, err)
			}
		}
		h := queue[0]
		queue = queue[1:]
		if h == ha {
			return true, nil
		}
		c, err := object.GetCommit(s.st.storage, h)
		if errors.Is(err, plumbing.ErrObjectNotFound) && h != hb {
			// The parent of a commit at the shallow clone's edge: history stops here.
			truncated = true
			continue
		}
		if err != nil {
			return false, newError(s.redact, KindNotFound, op, fmt.Errorf("commit %s: %w", h, ErrCommitNotFound))
		}
		for _, p := range c.ParentHashes {
			if !seen[p] {
				seen[p] = true
				queue = append(queue, p)
			}
		}
	}
	if truncated {
		return false, newError(s.redact, KindNotFound, op, fmt.Errorf(
			"%w: the walk reached the edge of the shallow clone (Options.Depth %d) without finding %s",
			ErrHistoryTruncated, s.opts.Depth, a))
	}
	return false, nil
}

// parseSHA accepts a full 40-character hexadecimal commit SHA.
func parseSHA(sha string) (plumbing.Hash, error) {
	if !plumbing.IsHash(sha) {
		return plumbing.ZeroHash, fmt.Errorf("%q is not a full commit SHA", sha)
	}
	return plumbing.NewHash(sha), nil
}
