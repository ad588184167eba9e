package gitsource

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/internal/gitserver"
)

func TestPollClonesOverHTTP(t *testing.T) {
	tests := []struct {
		name     string
		auth     bool
		mutate   func(*Options)
		wantKind ErrorKind
		wantMsg  string
	}{
		{name: "anonymous"},
		{name: "basic auth", auth: true},
		{name: "credentials in the URL", auth: true, mutate: func(o *Options) {
			o.Credentials = Credentials{}
			o.URL = strings.Replace(o.URL, "http://", "http://"+testUser+":"+testPassword+"@", 1)
		}},
		{name: "wrong password", auth: true, wantKind: KindAuth, wantMsg: "authentication required",
			mutate: func(o *Options) { o.Credentials.Password = "not-" + testPassword }},
		{name: "no credentials", auth: true, wantKind: KindAuth, wantMsg: "authentication required",
			mutate: func(o *Options) { o.Credentials = Credentials{} }},
		{name: "missing repository", wantKind: KindNotFound, wantMsg: "repository not found",
			mutate: func(o *Options) { o.URL = strings.Replace(o.URL, "pipelines.git", "nope.git", 1) }},
		{name: "missing branch", wantKind: KindNotFound, wantMsg: `refs/heads/nope`,
			mutate: func(o *Options) { o.Branch = "nope" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.auth)
			var mutate []func(*Options)
			if tt.mutate != nil {
				mutate = append(mutate, tt.mutate)
			}
			s := f.source(t, mutate...)
			snap, changed, err := s.Poll(context.Background())
			if tt.wantKind != "" {
				require.Error(t, err)
				assert.Equal(t, tt.wantKind, KindOf(err), "error: %v", err)
				assert.Contains(t, err.Error(), tt.wantMsg)
				assert.Contains(t, err.Error(), f.srv.URL(f.name)[len("http://"):len("http://")+9], "the error names the remote")
				assertNoSecrets(t, err.Error())
				assert.Nil(t, snap)
				assert.Nil(t, s.Last())
				return
			}
			require.NoError(t, err)
			assert.True(t, changed)
			assert.Equal(t, f.head(t), snap.Commit)
			assert.Equal(t, "ebb test", snap.Author.Name)
			assert.Equal(t, "test@ebb.dev", snap.Author.Email)
			assert.Equal(t, "Add web pipeline\n", snap.Message)
			assert.WithinDuration(t, time.Now(), snap.Time, time.Hour)
			data, err := fs.ReadFile(snap.FS, "pipelines/web.yaml")
			require.NoError(t, err)
			assert.Contains(t, string(data), "name: web")
			assert.Same(t, snap, s.Last())
			assert.NotContains(t, s.URL(), testPassword)
		})
	}
}

func TestPollLocalRepository(t *testing.T) {
	f := newFixture(t, false)
	tests := []struct {
		name string
		url  string
	}{
		{"file URL", "file://" + f.srv.RepoDir(f.name)},
		{"local path", f.srv.RepoDir(f.name)},
		{"work tree path", f.work.Dir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := f.source(t, func(o *Options) { o.URL = tt.url })
			snap, changed := poll(t, s)
			assert.True(t, changed)
			assert.Equal(t, f.head(t), snap.Commit)

			sha := f.push(t, "Change "+tt.name, map[string]string{"pipelines/web.yaml": tt.name})
			snap, changed = poll(t, s)
			assert.True(t, changed)
			assert.Equal(t, sha, snap.Commit)
			data, err := fs.ReadFile(snap.FS, "pipelines/web.yaml")
			require.NoError(t, err)
			assert.Equal(t, tt.name, string(data))
		})
	}
}

func TestPollUnchangedIsOneRoundTrip(t *testing.T) {
	f := newFixture(t, true)
	s := f.source(t)
	first, _ := poll(t, s)

	infoRefs, uploads := f.srv.Requests("info/refs"), f.srv.Requests("git-upload-pack")
	for range 3 {
		snap, changed := poll(t, s)
		assert.False(t, changed)
		assert.Same(t, first, snap, "an unchanged poll serves the same snapshot")
	}
	assert.Equal(t, infoRefs+3, f.srv.Requests("info/refs"), "one ref advertisement per poll")
	assert.Equal(t, uploads, f.srv.Requests("git-upload-pack"), "no fetch when nothing changed")

	sha := f.push(t, "Bump", map[string]string{"pipelines/web.yaml": "v2"})
	snap, changed := poll(t, s)
	assert.True(t, changed)
	assert.Equal(t, sha, snap.Commit)
	assert.Equal(t, uploads+1, f.srv.Requests("git-upload-pack"), "one fetch when the head moved")
}

func TestPushSeenByNextPoll(t *testing.T) {
	f := newFixture(t, false)
	s := f.source(t, func(o *Options) { o.Path = "pipelines" })
	first, _ := poll(t, s)

	sha := f.push(t, "Add api pipeline", map[string]string{"pipelines/api.yaml": "name: api\n"})
	snap, changed := poll(t, s)
	require.True(t, changed)
	assert.Equal(t, sha, snap.Commit)
	assert.Equal(t, []string{first.Commit}, snap.Parents)
	assert.Equal(t, "pipelines", snap.Path)
	assert.Equal(t, "refs/heads/main", snap.Ref)
	names := dirNames(t, snap.FS, ".")
	assert.Equal(t, []string{"api.yaml", "web.yaml"}, names)
	_, err := fs.Stat(first.FS, "api.yaml")
	assert.ErrorIs(t, err, fs.ErrNotExist, "an older snapshot is immutable")
}

func TestForcePush(t *testing.T) {
	f := newFixture(t, false)
	s := f.source(t)
	base, _ := poll(t, s)
	bad := f.push(t, "Bad change", map[string]string{"pipelines/web.yaml": "bad"})
	snap, _ := poll(t, s)
	require.Equal(t, bad, snap.Commit)

	// Rewrite history: drop the bad commit and push something else in its place.
	_, err := f.work.Git("reset", "--hard", base.Commit)
	require.NoError(t, err)
	good, err := f.work.CommitFiles("Good change", map[string]string{"pipelines/web.yaml": "good"})
	require.NoError(t, err)
	require.NoError(t, f.work.ForcePush())

	snap, changed := poll(t, s)
	require.True(t, changed)
	assert.Equal(t, good, snap.Commit)
	data, err := fs.ReadFile(snap.FS, "pipelines/web.yaml")
	require.NoError(t, err)
	assert.Equal(t, "good", string(data))
	ancestor, err := s.IsAncestor(context.Background(), bad, good)
	require.NoError(t, err)
	assert.False(t, ancestor, "the rewritten commit is no longer in the history")

	// A force-push back to a commit the cache holds needs no fetch.
	_, err = f.work.Git("reset", "--hard", bad)
	require.NoError(t, err)
	require.NoError(t, f.work.ForcePush())
	uploads := f.srv.Requests("git-upload-pack")
	snap, changed = poll(t, s)
	require.True(t, changed)
	assert.Equal(t, bad, snap.Commit)
	assert.Equal(t, uploads, f.srv.Requests("git-upload-pack"))
}

func TestDeletedBranchKeepsLastSnapshot(t *testing.T) {
	for _, otherBranch := range []bool{false, true} {
		t.Run(map[bool]string{false: "only branch", true: "other branches remain"}[otherBranch], func(t *testing.T) {
			testDeletedBranch(t, otherBranch)
		})
	}
}

func testDeletedBranch(t *testing.T, otherBranch bool) {
	f := newFixture(t, false)
	s := f.source(t)
	good, _ := poll(t, s)

	if otherBranch {
		_, err := f.work.Git("push", "--quiet", "origin", "HEAD:refs/heads/other")
		require.NoError(t, err)
	}
	_, err := gitserver.Git(f.srv.RepoDir(f.name), "update-ref", "-d", "refs/heads/main")
	require.NoError(t, err)
	snap, changed, err := s.Poll(context.Background())
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrRefNotFound)
	assert.Equal(t, KindNotFound, KindOf(err))
	assert.Contains(t, err.Error(), `refs/heads/main`)
	assert.False(t, changed)
	assert.Same(t, good, snap, "the last good snapshot is still served")
	assert.Same(t, good, s.Last())
	st := s.Status()
	assert.Equal(t, 1, st.ConsecutiveFailures)
	assert.ErrorIs(t, st.Err, ErrRefNotFound)
	assert.Equal(t, good.Commit, st.Commit)
	data, err := fs.ReadFile(good.FS, "pipelines/web.yaml")
	require.NoError(t, err, "the last snapshot still reads")
	assert.Contains(t, string(data), "web")

	// The branch comes back.
	sha := f.push(t, "Recreate", map[string]string{"x": "y"})
	snap, changed = poll(t, s)
	assert.True(t, changed)
	assert.Equal(t, sha, snap.Commit)
	assert.Zero(t, s.Status().ConsecutiveFailures)
}

func TestCorruptCacheIsClonedAgain(t *testing.T) {
	corruptions := []struct {
		name    string
		corrupt func(t *testing.T, dir string)
	}{
		{"packs truncated", func(t *testing.T, dir string) {
			packs, err := filepath.Glob(filepath.Join(dir, "objects", "pack", "*"))
			require.NoError(t, err)
			require.NotEmpty(t, packs)
			for _, p := range packs {
				require.NoError(t, os.WriteFile(p, []byte("garbage"), 0o644))
			}
		}},
		{"HEAD and config garbage", func(t *testing.T, dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "HEAD"), []byte("\x00\x01"), 0o644))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "config"), []byte("[[[["), 0o644))
		}},
		{"objects removed", func(t *testing.T, dir string) {
			require.NoError(t, os.RemoveAll(filepath.Join(dir, "objects")))
		}},
	}
	for _, c := range corruptions {
		for _, restart := range []bool{false, true} {
			name := c.name
			if restart {
				name += " before a restart"
			}
			t.Run(name, func(t *testing.T) {
				f := newFixture(t, false)
				o := f.options(t)
				s, err := New(o)
				require.NoError(t, err)
				poll(t, s)
				sha := f.push(t, "Next", map[string]string{"pipelines/web.yaml": "next"})
				if restart {
					require.NoError(t, s.Close())
					c.corrupt(t, s.st.dir)
					s, err = New(o)
					require.NoError(t, err)
				} else {
					s.st.mu.Lock()
					c.corrupt(t, s.st.dir)
					s.st.storage.ObjectStorage.Reindex()
					s.st.mu.Unlock()
				}
				defer s.Close()
				snap, changed := poll(t, s)
				assert.True(t, changed)
				assert.Equal(t, sha, snap.Commit)
				data, err := fs.ReadFile(snap.FS, "pipelines/web.yaml")
				require.NoError(t, err)
				assert.Equal(t, "next", string(data))
			})
		}
	}
}

func TestServerDownThenBack(t *testing.T) {
	f := newFixture(t, true)
	s := f.source(t, func(o *Options) { o.Interval = 20 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := make(chan *Snapshot, 16)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, func(s *Snapshot) { changes <- s }) }()

	first := <-changes
	require.Equal(t, f.head(t), first.Commit)

	require.NoError(t, f.srv.Down())
	eventually(t, func() bool { return s.Status().ConsecutiveFailures >= 3 }, "polls fail while the server is down")
	st := s.Status()
	assert.Equal(t, KindUnavailable, KindOf(st.Err), "err: %v", st.Err)
	assert.Same(t, first, s.Last(), "the last snapshot is still served")
	assertNoSecrets(t, st.Err.Error())

	// A push lands while the server is away (straight into the bare repository).
	sha, err := f.work.CommitFiles("While down", map[string]string{"pipelines/web.yaml": "down"})
	require.NoError(t, err)
	_, err = f.work.Git("push", "--quiet", f.srv.RepoDir(f.name), "HEAD:main")
	require.NoError(t, err)

	require.NoError(t, f.srv.Up())
	select {
	case snap := <-changes:
		assert.Equal(t, sha, snap.Commit)
	case <-time.After(time.Minute):
		t.Fatal("the source did not recover after the server came back")
	}
	assert.Zero(t, s.Status().ConsecutiveFailures)
	assert.NoError(t, s.Status().Err)
	assert.Contains(t, f.logs.String(), "git poll failed; serving the last good snapshot")
	assert.Contains(t, f.logs.String(), "git poll recovered")
	cancel()
	assert.ErrorIs(t, <-done, context.Canceled)
}

func TestTagSource(t *testing.T) {
	f := newFixture(t, false)
	v1 := f.head(t)
	_, err := f.work.Git("tag", "-a", "-m", "release 1", "v1")
	require.NoError(t, err)
	_, err = f.work.Git("push", "--quiet", "origin", "v1")
	require.NoError(t, err)
	f.push(t, "After v1", map[string]string{"pipelines/web.yaml": "after"})

	s := f.source(t, func(o *Options) { o.Branch, o.Tag = "", "v1" })
	snap, _ := poll(t, s)
	assert.Equal(t, v1, snap.Commit, "an annotated tag is peeled to its commit")
	assert.Equal(t, "refs/tags/v1", snap.Ref)

	// Re-tagging moves the source.
	v2 := f.head(t)
	_, err = f.work.Git("tag", "-f", "-a", "-m", "release 1 again", "v1")
	require.NoError(t, err)
	_, err = f.work.Git("push", "--quiet", "--force", "origin", "v1")
	require.NoError(t, err)
	snap, changed := poll(t, s)
	assert.True(t, changed)
	assert.Equal(t, v2, snap.Commit)
	_, changed = poll(t, s)
	assert.False(t, changed)
}

func TestNewRejectsBadOptions(t *testing.T) {
	base := DefaultOptions()
	base.URL, base.Branch, base.CacheDir = "https://example.com/r.git", "main", t.TempDir()
	tests := []struct {
		name   string
		mutate func(*Options)
		want   string
	}{
		{"no URL", func(o *Options) { o.URL = "" }, "URL is required"},
		{"branch and tag", func(o *Options) { o.Tag = "v1" }, "exactly one of Branch and Tag"},
		{"neither branch nor tag", func(o *Options) { o.Branch = "" }, "exactly one of Branch and Tag"},
		{"no cache dir", func(o *Options) { o.CacheDir = "" }, "CacheDir is required"},
		{"path escapes", func(o *Options) { o.Path = "../x" }, "must stay inside"},
		{"zero interval", func(o *Options) { o.Interval = 0 }, "Interval"},
		{"ssh without key", func(o *Options) { o.URL = "ssh://git@example.com/r.git" }, "ssh needs a private key"},
		{"bad ssh key", func(o *Options) {
			o.URL = "ssh://git@example.com/r.git"
			o.Credentials.SSHKey = []byte("-----BEGIN OPENSSH PRIVATE KEY-----\n" + testToken + "\n-----END OPENSSH PRIVATE KEY-----\n")
		}, "parse ssh private key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			tt.mutate(&o)
			_, err := New(o)
			require.Error(t, err)
			assert.Equal(t, KindConfig, KindOf(err))
			assert.Contains(t, err.Error(), tt.want)
			assertNoSecrets(t, err.Error())
		})
	}
}

func dirNames(t *testing.T, fsys fs.FS, dir string) []string {
	t.Helper()
	entries, err := fs.ReadDir(fsys, dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
