package gitsource

import (
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// Snapshot is one commit of the source: who made it, when, why, and the files under the
// source's path. It is immutable and safe to share between goroutines.
type Snapshot struct {
	// Commit is the full SHA of the commit.
	Commit string
	// Ref is the ref the source follows (refs/heads/main, refs/tags/v1), or "" for a
	// snapshot taken at a SHA with SnapshotAt.
	Ref string
	// Path is the directory inside the repository that FS is rooted at ("" for the root).
	Path string
	// Author wrote the change; Committer made the commit.
	Author, Committer Signature
	// Time is when the commit was made (the committer time).
	Time time.Time
	// Message is the full commit message.
	Message string
	// Parents are the SHAs of the parent commits.
	Parents []string
	// Reverts are the SHAs this commit says it reverts, from git's "This reverts commit
	// <sha>." lines; empty for an ordinary commit.
	Reverts []string
	// FS reads the files under Path straight from Git's tree objects. Symlinks are reported by
	// Lstat as fs.ModeSymlink with their target from ReadLink; Open, Stat and ReadFile follow
	// them only while they stay inside FS. Modification times are the commit time.
	FS fs.ReadLinkFS
}

// Signature is a person and a moment in a commit.
type Signature struct {
	Name, Email string
	When        time.Time
}

// ShortCommit returns the 12-character abbreviation of the commit, for logs.
func (s *Snapshot) ShortCommit() string {
	if len(s.Commit) > 12 {
		return s.Commit[:12]
	}
	return s.Commit
}

// snapshotLocked builds the snapshot of commit h with its files under path.
func (st *store) snapshotLocked(h plumbing.Hash, ref, path string) (*Snapshot, error) {
	c, err := object.GetCommit(st.storage, h)
	if err != nil {
		if errors.Is(err, plumbing.ErrObjectNotFound) {
			return nil, fmt.Errorf("read commit %s: %w", h, ErrCommitNotFound)
		}
		return nil, fmt.Errorf("read commit %s: %w", h, err)
	}
	tree, err := c.Tree()
	if err != nil {
		return nil, fmt.Errorf("read tree of commit %s: %w", h, err)
	}
	root := tree.Hash
	if path != "" {
		sub, err := tree.Tree(path)
		if errors.Is(err, object.ErrDirectoryNotFound) || errors.Is(err, object.ErrEntryNotFound) {
			return nil, fmt.Errorf("directory %q in commit %s: %w", path, h, ErrPathNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("read directory %q in commit %s: %w", path, h, err)
		}
		root = sub.Hash
	}
	parents := make([]string, 0, len(c.ParentHashes))
	for _, p := range c.ParentHashes {
		parents = append(parents, p.String())
	}
	return &Snapshot{
		Commit:    h.String(),
		Ref:       ref,
		Path:      path,
		Author:    Signature{Name: c.Author.Name, Email: c.Author.Email, When: c.Author.When},
		Committer: Signature{Name: c.Committer.Name, Email: c.Committer.Email, When: c.Committer.When},
		Time:      c.Committer.When,
		Message:   c.Message,
		Parents:   parents,
		Reverts:   RevertedCommits(c.Message),
		FS:        newTreeFS(st, root, c.Committer.When),
	}, nil
}
