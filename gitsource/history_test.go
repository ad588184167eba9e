package gitsource

import (
	"context"
	"io/fs"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/internal/gitserver"
)

func TestRevertedCommits(t *testing.T) {
	const sha = "0123456789abcdef0123456789abcdef01234567"
	tests := []struct {
		name    string
		message string
		want    []string
	}{
		{"git revert", "Revert \"Bump web\"\n\nThis reverts commit " + sha + ".\n", []string{sha}},
		{"upper case, no period", "Revert\n\nThis reverts commit " + "0123456789ABCDEF" + "\n", []string{"0123456789abcdef"}},
		{"two reverts", "Revert two\n\nThis reverts commit aaaaaaa.\nThis reverts commit bbbbbbbb.\n", []string{"aaaaaaa", "bbbbbbbb"}},
		{"ordinary commit", "Bump web to 1.4.2\n", nil},
		{"mentioned mid-line", "Note: This reverts commit " + sha + ". maybe\n", nil},
		{"too short", "This reverts commit abc123.\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, RevertedCommits(tt.message))
		})
	}
}

func TestRevertDetection(t *testing.T) {
	f := newFixture(t, false)
	s := f.source(t)
	good, _ := poll(t, s)
	bad := f.push(t, "Bump web to broken", map[string]string{"pipelines/web.yaml": "image: broken\n"})
	revert, err := f.work.Revert(bad)
	require.NoError(t, err)
	require.NoError(t, f.work.Push())
	snap, _ := poll(t, s)
	require.Equal(t, revert, snap.Commit)

	assert.Equal(t, []string{bad}, snap.Reverts)
	assert.True(t, snap.RevertsCommit(bad))
	assert.True(t, snap.RevertsCommit(bad[:10]), "an abbreviated SHA matches")
	assert.False(t, snap.RevertsCommit(good.Commit))

	tests := []struct {
		name           string
		commit, target string
		want           bool
	}{
		{"revert reverts the bad commit", revert, bad, true},
		{"revert does not revert the good commit", revert, good.Commit, false},
		{"ordinary commit reverts nothing", bad, good.Commit, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Reverts(context.Background(), tt.commit, tt.target)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
	// The revert restores the good content.
	data, err := fs.ReadFile(snap.FS, "pipelines/web.yaml")
	require.NoError(t, err)
	goodData, err := fs.ReadFile(good.FS, "pipelines/web.yaml")
	require.NoError(t, err)
	assert.Equal(t, string(goodData), string(data))
}

func TestIsAncestor(t *testing.T) {
	f := newFixture(t, false)
	s := f.source(t)
	c1, _ := poll(t, s)
	c2 := f.push(t, "c2", map[string]string{"a": "2"})
	c3 := f.push(t, "c3", map[string]string{"a": "3"})
	// A side branch merged back: c4 on the side, m merges it.
	_, err := f.work.Git("checkout", "--quiet", "-b", "side", c2)
	require.NoError(t, err)
	c4, err := f.work.CommitFiles("c4", map[string]string{"b": "4"})
	require.NoError(t, err)
	_, err = f.work.Git("checkout", "--quiet", "main")
	require.NoError(t, err)
	_, err = f.work.Git("merge", "--quiet", "--no-edit", "side")
	require.NoError(t, err)
	require.NoError(t, f.work.Push())
	m := f.head(t)
	poll(t, s)

	tests := []struct {
		name string
		a, b string
		want bool
	}{
		{"parent", c2, c3, true},
		{"grandparent", c1.Commit, c3, true},
		{"itself", c3, c3, true},
		{"child is not an ancestor", c3, c2, false},
		{"merged side branch", c4, m, true},
		{"side branch does not contain main", c3, c4, false},
		{"root of merge", c1.Commit, m, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.IsAncestor(context.Background(), tt.a, tt.b)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}

	_, err = s.IsAncestor(context.Background(), "abc", c3)
	assert.Equal(t, KindConfig, KindOf(err))
	_, err = s.IsAncestor(context.Background(), "1111111111111111111111111111111111111111", c3)
	assert.ErrorIs(t, err, ErrCommitNotFound)
}

func TestSnapshotAt(t *testing.T) {
	f := newFixture(t, false)
	s := f.source(t, func(o *Options) { o.Path = "pipelines" })
	good, _ := poll(t, s)
	bad := f.push(t, "Break web", map[string]string{"pipelines/web.yaml": "broken"})
	latest, _ := poll(t, s)
	require.Equal(t, bad, latest.Commit)

	// Roll back: the last known-good commit reads as it did.
	old, err := s.SnapshotAt(context.Background(), good.Commit)
	require.NoError(t, err)
	assert.Equal(t, good.Commit, old.Commit)
	assert.Equal(t, "", old.Ref)
	assert.Equal(t, good.Message, old.Message)
	data, err := fs.ReadFile(old.FS, "web.yaml")
	require.NoError(t, err)
	assert.Contains(t, string(data), "name: web")
	assert.Same(t, latest, s.Last(), "a snapshot at an old commit does not change what is served")

	t.Run("fresh cache fetches the commit by SHA", func(t *testing.T) {
		// A commit on another branch, never fetched by this source.
		_, err := f.work.Git("checkout", "--quiet", "-b", "other")
		require.NoError(t, err)
		other, err := f.work.CommitFiles("Other", map[string]string{"pipelines/other.yaml": "x"})
		require.NoError(t, err)
		_, err = f.work.Git("push", "--quiet", "origin", "other")
		require.NoError(t, err)
		_, err = gitserver.Git(f.srv.RepoDir(f.name), "config", "uploadpack.allowReachableSHA1InWant", "true")
		require.NoError(t, err)

		fresh := f.source(t, func(o *Options) { o.Path = "pipelines" })
		snap, err := fresh.SnapshotAt(context.Background(), other)
		require.NoError(t, err)
		assert.Equal(t, other, snap.Commit)
		data, err := fs.ReadFile(snap.FS, "other.yaml")
		require.NoError(t, err)
		assert.Equal(t, "x", string(data))
	})

	t.Run("unknown commit", func(t *testing.T) {
		_, err := s.SnapshotAt(context.Background(), "1111111111111111111111111111111111111111")
		require.Error(t, err)
		assert.ErrorIs(t, err, ErrCommitNotFound)
		assert.Equal(t, KindNotFound, KindOf(err))
	})
}

func TestShallowHistory(t *testing.T) {
	f := newFixture(t, false)
	c1 := f.head(t)
	c2 := f.push(t, "c2", map[string]string{"a": "2"})
	c3 := f.push(t, "c3", map[string]string{"a": "3"})
	c4 := f.push(t, "c4", map[string]string{"a": "4"})
	s := f.source(t, func(o *Options) { o.Depth = 2 })
	snap, _ := poll(t, s)
	require.Equal(t, c4, snap.Commit)

	got, err := s.IsAncestor(context.Background(), c3, c4)
	require.NoError(t, err)
	assert.True(t, got, "within the fetched history")

	_, err = s.IsAncestor(context.Background(), c1, c4)
	assert.ErrorIs(t, err, ErrCommitNotFound, "c1 was never fetched")

	_, err = gitserver.Git(f.srv.RepoDir(f.name), "config", "uploadpack.allowReachableSHA1InWant", "true")
	require.NoError(t, err)
	// A commit on a side branch, fetched by SHA: whether it is in c4's history cannot be told
	// from a clone that stops at c3.
	_, err = f.work.Git("checkout", "--quiet", "-b", "side")
	require.NoError(t, err)
	side, err := f.work.CommitFiles("side", map[string]string{"b": "side"})
	require.NoError(t, err)
	_, err = f.work.Git("push", "--quiet", "origin", "side")
	require.NoError(t, err)
	_, err = f.work.Git("checkout", "--quiet", "main")
	require.NoError(t, err)
	_, err = s.SnapshotAt(context.Background(), side)
	require.NoError(t, err)
	_, err = s.IsAncestor(context.Background(), side, c4)
	assert.ErrorIs(t, err, ErrHistoryTruncated)
	assert.Equal(t, KindNotFound, KindOf(err))

	// c2, beyond the edge, is fetched by SHA for a rollback.
	old, err := s.SnapshotAt(context.Background(), c2)
	require.NoError(t, err)
	assert.Equal(t, c2, old.Commit)
	data, err := fs.ReadFile(old.FS, "a")
	require.NoError(t, err)
	assert.Equal(t, "2", string(data))

	// New pushes keep arriving incrementally.
	c5 := f.push(t, "c5", map[string]string{"a": "5"})
	snap, _ = poll(t, s)
	assert.Equal(t, c5, snap.Commit)
	got, err = s.IsAncestor(context.Background(), c4, c5)
	require.NoError(t, err)
	assert.True(t, got)
}
