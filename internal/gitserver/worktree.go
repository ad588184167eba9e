package gitserver

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// WorkTree is a non-bare repository driven with the git CLI, as a person would: write files,
// commit, push, revert.
type WorkTree struct {
	Dir string
}

// Clone clones url into dir. url may carry credentials (see Server.AuthURL).
func Clone(url, dir string) (*WorkTree, error) {
	if _, err := Git("", "clone", "--quiet", url, dir); err != nil {
		return nil, err
	}
	w := &WorkTree{Dir: dir}
	// An empty remote has no HEAD yet; make sure the first commit lands on main.
	if _, err := w.Git("symbolic-ref", "HEAD", "refs/heads/main"); err != nil {
		return nil, err
	}
	return w, nil
}

// Init creates a new repository in dir on branch main, with no remote: a local repository
// for file:// sources and the demo.
func Init(dir string) (*WorkTree, error) {
	if _, err := Git("", "init", "--quiet", "--initial-branch=main", dir); err != nil {
		return nil, err
	}
	return &WorkTree{Dir: dir}, nil
}

// Git runs git in the work tree.
func (w *WorkTree) Git(args ...string) (string, error) { return Git(w.Dir, args...) }

// WriteFiles writes each file (path relative to the work tree, '/'-separated) with its
// content, creating directories as needed.
func (w *WorkTree) WriteFiles(files map[string]string) error {
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		full := filepath.Join(w.Dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, []byte(files[p]), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// RemoveFiles deletes files from the work tree.
func (w *WorkTree) RemoveFiles(paths ...string) error {
	for _, p := range paths {
		if err := os.RemoveAll(filepath.Join(w.Dir, filepath.FromSlash(p))); err != nil {
			return err
		}
	}
	return nil
}

// Commit stages every change and commits it, returning the new commit's SHA. An empty commit
// is allowed, so a test can make history without changing files.
func (w *WorkTree) Commit(message string) (string, error) {
	if _, err := w.Git("add", "-A"); err != nil {
		return "", err
	}
	if _, err := w.Git("commit", "--quiet", "--allow-empty", "-m", message); err != nil {
		return "", err
	}
	return w.Head()
}

// CommitFiles writes files and commits them.
func (w *WorkTree) CommitFiles(message string, files map[string]string) (string, error) {
	if err := w.WriteFiles(files); err != nil {
		return "", err
	}
	return w.Commit(message)
}

// Push pushes the current branch to origin.
func (w *WorkTree) Push() error {
	_, err := w.Git("push", "--quiet", "origin", "HEAD")
	return err
}

// ForcePush force-pushes the current branch to origin.
func (w *WorkTree) ForcePush() error {
	_, err := w.Git("push", "--quiet", "--force", "origin", "HEAD")
	return err
}

// CommitAndPush writes files, commits and pushes, returning the commit's SHA.
func (w *WorkTree) CommitAndPush(message string, files map[string]string) (string, error) {
	sha, err := w.CommitFiles(message, files)
	if err != nil {
		return "", err
	}
	if err := w.Push(); err != nil {
		return "", fmt.Errorf("push %s: %w", sha, err)
	}
	return sha, nil
}

// Revert reverts commit sha with git's standard message ("This reverts commit <sha>.") and
// returns the new commit's SHA.
func (w *WorkTree) Revert(sha string) (string, error) {
	if _, err := w.Git("revert", "--no-edit", sha); err != nil {
		return "", err
	}
	return w.Head()
}

// Head returns the SHA of HEAD.
func (w *WorkTree) Head() (string, error) { return w.Git("rev-parse", "HEAD") }
