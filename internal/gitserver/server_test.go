package gitserver

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestServerCloneAndPush(t *testing.T) {
	const user, password = "alice", "s3cret-pass"
	srv, err := New(filepath.Join(t.TempDir(), "repos"), Options{Username: user, Password: password})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	_, err = srv.CreateRepo("demo")
	require.NoError(t, err)

	w, err := Clone(srv.AuthURL("demo", user, password), filepath.Join(t.TempDir(), "w"))
	require.NoError(t, err)
	sha, err := w.CommitAndPush("first", map[string]string{"a.txt": "a\n"})
	require.NoError(t, err)
	assert.GreaterOrEqual(t, srv.Requests("git-receive-pack"), int64(1))

	// The server serves what was pushed.
	head, err := Git(srv.RepoDir("demo"), "rev-parse", "refs/heads/main")
	require.NoError(t, err)
	assert.Equal(t, sha, head)
	c, err := Clone(srv.AuthURL("demo", user, password), filepath.Join(t.TempDir(), "c"))
	require.NoError(t, err)
	got, err := c.Head()
	require.NoError(t, err)
	assert.Equal(t, sha, got)
	assert.GreaterOrEqual(t, srv.Requests("git-upload-pack"), int64(1))

	tests := []struct {
		name, user, password string
	}{
		{"wrong password", user, "wrong"},
		{"no credentials", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := srv.URL("demo")
			if tt.user != "" {
				url = srv.AuthURL("demo", tt.user, tt.password)
			}
			_, err := Clone(url, filepath.Join(t.TempDir(), "x"))
			require.Error(t, err)
			assert.NotContains(t, err.Error(), tt.password+"@", "credentials must be redacted")
			if _, err := w.CommitFiles("rejected", map[string]string{"b.txt": tt.name}); err != nil {
				t.Fatal(err)
			}
			_, err = Git(w.Dir, "push", "--quiet", url, "HEAD:main")
			require.Error(t, err, "push without the right password must be rejected")
			head, err := Git(srv.RepoDir("demo"), "rev-parse", "refs/heads/main")
			require.NoError(t, err)
			assert.Equal(t, sha, head, "a rejected push must not change the branch")
		})
	}
}

func TestServerDownAndUp(t *testing.T) {
	srv, err := New(t.TempDir(), Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	_, err = srv.CreateRepo("demo")
	require.NoError(t, err)
	url := srv.URL("demo")

	require.NoError(t, srv.Down())
	_, err = Git("", "ls-remote", url)
	require.Error(t, err, "a server that is down refuses connections")

	require.NoError(t, srv.Up())
	assert.Equal(t, url, srv.URL("demo"), "the server comes back on the same address")
	_, err = Git("", "ls-remote", url)
	require.NoError(t, err)
}

func TestImportSyntheticHistory(t *testing.T) {
	srv, err := New(t.TempDir(), Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	_, err = srv.CreateRepo("big")
	require.NoError(t, err)
	require.NoError(t, ImportSyntheticHistory(srv.RepoDir("big"), 50, 20))

	count, err := Git(srv.RepoDir("big"), "rev-list", "--count", "main")
	require.NoError(t, err)
	assert.Equal(t, "50", count)
	files, err := Git(srv.RepoDir("big"), "ls-tree", "-r", "--name-only", "main")
	require.NoError(t, err)
	assert.Len(t, splitLines(files), 20)
	content, err := Git(srv.RepoDir("big"), "show", "main:"+SyntheticPath(9))
	require.NoError(t, err)
	assert.Contains(t, content, `tag: "1.0.49"`, "commit 49 bumped file 49 %% 20 = 9")
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}
