package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"ebb.dev/ebb/gitsource"
	"ebb.dev/ebb/internal/redact"
)

// repoFlags say where a command reads pipelines from.
type repoFlags struct {
	repo, branch, tag, path string
}

// openRepo returns the repository's files: a local directory as it is on disk, or a Git URL
// cloned by gitsource into a temporary cache (credentials from the EBB_GIT_* variables), the
// way the daemon reads it. close removes what openRepo made.
func openRepo(ctx context.Context, f repoFlags) (fsys fs.FS, describe string, close func(), err error) {
	if fi, err := os.Stat(f.repo); err == nil && fi.IsDir() {
		dir := filepath.Join(f.repo, filepath.FromSlash(f.path))
		return os.DirFS(dir), dir, func() {}, nil
	}
	if !looksLikeURL(f.repo) {
		return nil, "", nil, fmt.Errorf("repository %q is neither a directory nor a Git URL", f.repo)
	}
	cache, err := os.MkdirTemp("", "ebb-plan-")
	if err != nil {
		return nil, "", nil, err
	}
	src, snap, err := pollOnce(ctx, f, cache)
	if err != nil {
		_ = os.RemoveAll(cache)
		return nil, "", nil, err
	}
	cleanup := func() {
		_ = src.Close() // the snapshot reads from the clone until then
		_ = os.RemoveAll(cache)
	}
	return snap.FS, fmt.Sprintf("%s@%s", redact.URL(f.repo), snap.ShortCommit()), cleanup, nil
}

// pollOnce clones the source once.
func pollOnce(ctx context.Context, f repoFlags, cache string) (*gitsource.Source, *gitsource.Snapshot, error) {
	opts := gitsource.DefaultOptions()
	opts.URL, opts.Branch, opts.Tag, opts.Path, opts.CacheDir = f.repo, f.branch, f.tag, f.path, cache
	if f.tag != "" {
		opts.Branch = ""
	}
	creds, err := gitsource.CredentialsFromEnv(os.Getenv)
	if err != nil {
		return nil, nil, err
	}
	opts.Credentials = creds
	src, err := gitsource.New(opts)
	if err != nil {
		return nil, nil, err
	}
	snap, _, err := src.Poll(ctx)
	if err != nil {
		_ = src.Close()
		return nil, nil, err
	}
	return src, snap, nil
}

func looksLikeURL(s string) bool {
	return strings.Contains(s, "://") || strings.HasPrefix(s, "git@") || strings.HasSuffix(s, ".git")
}
