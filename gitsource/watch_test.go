package gitsource

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/internal/gitserver"
)

// TestWatcherTriggersPoll: with an hour between polls, only the watch can make the source
// see a change, for a commit in a work tree and for a push into a bare repository.
func TestWatcherTriggersPoll(t *testing.T) {
	f := newFixture(t, false)
	tests := []struct {
		name   string
		dir    string
		change func(t *testing.T) string
	}{
		{"commit in a work tree", f.work.Dir, func(t *testing.T) string {
			sha, err := f.work.CommitFiles("Local commit", map[string]string{"pipelines/web.yaml": "local"})
			require.NoError(t, err)
			return sha
		}},
		{"push into a bare repository", f.srv.RepoDir(f.name), func(t *testing.T) string {
			return f.push(t, "Pushed", map[string]string{"pipelines/web.yaml": "pushed"})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := f.source(t, func(o *Options) { o.URL, o.Interval = tt.dir, time.Hour })
			dir, ok := LocalPath(s.opts.URL)
			require.True(t, ok)
			w, err := NewWatcher(dir, s, newTestLogger(f.logs))
			require.NoError(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { _ = w.Run(ctx) }()
			changes := make(chan *Snapshot, 8)
			go func() { _ = s.Run(ctx, func(s *Snapshot) { changes <- s }) }()
			<-changes

			sha := tt.change(t)
			deadline := time.After(time.Minute)
			for {
				select {
				case snap := <-changes:
					if snap.Commit == sha {
						return
					}
				case <-deadline:
					t.Fatalf("the watch did not trigger a poll that found %s", sha)
				}
			}
		})
	}
}

func TestWatcherFiltersEvents(t *testing.T) {
	w, err := gitserver.Init(filepath.Join(t.TempDir(), "repo"))
	require.NoError(t, err)
	gitDir := filepath.Join(w.Dir, ".git")
	tests := []struct {
		name string
		op   fsnotify.Op
		want bool
	}{
		{"refs/heads/main", fsnotify.Create, true},
		{"refs/heads/main.lock", fsnotify.Create, false},
		{"refs/tags/v1", fsnotify.Create, true},
		{"packed-refs", fsnotify.Create, true},
		{"packed-refs.lock", fsnotify.Write, false},
		{"HEAD", fsnotify.Write, true},
		{"index", fsnotify.Write, false},
		{"objects/ab/cdef", fsnotify.Create, false},
		{"logs/HEAD", fsnotify.Write, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c counter
			watcher, err := NewWatcher(w.Dir, &c, nil)
			require.NoError(t, err)
			defer watcher.Close()
			watcher.handle(fsnotify.Event{Name: filepath.Join(gitDir, filepath.FromSlash(tt.name)), Op: tt.op})
			assert.Equal(t, tt.want, c.n.Load() == 1)
		})
	}

	_, err = NewWatcher(t.TempDir(), &counter{}, nil)
	assert.ErrorContains(t, err, "not a Git repository")
}

func TestLocalPath(t *testing.T) {
	tests := []struct {
		url, want string
		ok        bool
	}{
		{"file:///srv/git/repo.git", "/srv/git/repo.git", true},
		{"/srv/git/repo", "/srv/git/repo", true},
		{"./repo", "./repo", true},
		{"https://github.com/org/repo.git", "", false},
		{"ssh://git@github.com/org/repo.git", "", false},
		{"git@github.com:org/repo.git", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			got, ok := LocalPath(tt.url)
			assert.Equal(t, tt.ok, ok)
			assert.Equal(t, tt.want, got)
		})
	}
}
