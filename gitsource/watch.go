package gitsource

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/fsnotify/fsnotify"
)

// Watcher pokes a Triggerer when a ref of a local repository changes: a commit, a push into
// it, a reset, a new tag or a pack of refs. It watches the Git directory's refs/ (recursively,
// including directories created later), packed-refs and HEAD, and ignores git's *.lock
// files, so a push fires once the new ref is in place.
type Watcher struct {
	gitDir string
	target Triggerer
	log    *slog.Logger
	fsw    *fsnotify.Watcher
}

// LocalPath returns the directory of a file:// URL or a local path, and false for a remote
// URL: the daemon watches a source's repository when it is local.
func LocalPath(rawURL string) (string, bool) {
	if strings.HasPrefix(rawURL, "file://") {
		u, err := url.Parse(rawURL)
		if err != nil {
			return "", false
		}
		return u.Path, true
	}
	if strings.Contains(rawURL, "://") {
		return "", false
	}
	if filepath.IsAbs(rawURL) || strings.HasPrefix(rawURL, ".") {
		return rawURL, true
	}
	return "", false
}

// NewWatcher starts watching the repository at dir (a work tree or a bare repository).
// Call Run to deliver events and Close, or cancel Run's context, to stop.
func NewWatcher(dir string, target Triggerer, logger *slog.Logger) (*Watcher, error) {
	gitDir, err := findGitDir(dir)
	if err != nil {
		return nil, fmt.Errorf("watch repository %s: %w", dir, err)
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch repository %s: %w", dir, err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{gitDir: gitDir, target: target, fsw: fsw, log: logger.With("component", "gitsource-watch", "dir", gitDir)}
	if err := fsw.Add(gitDir); err != nil {
		_ = fsw.Close()
		return nil, fmt.Errorf("watch %s: %w", gitDir, err)
	}
	if err := w.addTree(filepath.Join(gitDir, "refs")); err != nil {
		_ = fsw.Close()
		return nil, err
	}
	return w, nil
}

// Run delivers events until ctx is done or the watcher is closed, and returns nil then.
func (w *Watcher) Run(ctx context.Context) error {
	defer w.fsw.Close()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return nil
			}
			w.handle(ev)
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return nil
			}
			// An overflowed event queue means events were lost: poll to be safe.
			w.log.Warn("watch error; polling to be safe", "err", err)
			w.target.Trigger()
		}
	}
}

// Close stops the watch.
func (w *Watcher) Close() error { return w.fsw.Close() }

// handle triggers on a ref change and watches new directories under refs/.
func (w *Watcher) handle(ev fsnotify.Event) {
	rel, err := filepath.Rel(w.gitDir, ev.Name)
	if err != nil {
		return
	}
	rel = filepath.ToSlash(rel)
	if strings.HasSuffix(rel, ".lock") {
		return
	}
	if rel != "packed-refs" && rel != "HEAD" && rel != "refs" && !strings.HasPrefix(rel, "refs/") {
		return
	}
	if ev.Has(fsnotify.Create) && strings.HasPrefix(rel, "refs/") {
		if info, err := os.Stat(ev.Name); err == nil && info.IsDir() {
			if err := w.addTree(ev.Name); err != nil {
				w.log.Warn("watch new ref directory", "err", err)
			}
		}
	}
	w.log.Debug("ref changed", "ref", rel, "op", ev.Op.String())
	w.target.Trigger()
}

// addTree watches dir and every directory below it.
func (w *Watcher) addTree(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if err := w.fsw.Add(p); err != nil {
			return fmt.Errorf("watch %s: %w", p, err)
		}
		return nil
	})
}

// findGitDir returns the Git directory of a work tree (dir/.git, or the directory a .git file
// points to) or of a bare repository (dir itself).
func findGitDir(dir string) (string, error) {
	dotGit := filepath.Join(dir, ".git")
	info, err := os.Stat(dotGit)
	switch {
	case err == nil && info.IsDir():
		return dotGit, nil
	case err == nil:
		b, err := os.ReadFile(dotGit)
		if err != nil {
			return "", err
		}
		gitDir, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "gitdir: ")
		if !ok {
			return "", fmt.Errorf("%s is not a gitdir file", dotGit)
		}
		if !filepath.IsAbs(gitDir) {
			gitDir = filepath.Join(dir, gitDir)
		}
		return gitDir, nil
	}
	if _, err := os.Stat(filepath.Join(dir, "HEAD")); err == nil {
		if _, err := os.Stat(filepath.Join(dir, "refs")); err == nil {
			return dir, nil
		}
	}
	return "", errors.New("not a Git repository")
}
