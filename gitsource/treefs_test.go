package gitsource

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/internal/gitserver"
)

// symlinkRepo commits a tree with regular, executable and nested files and symlinks of every
// kind, and returns a source on it.
func symlinkRepo(t *testing.T, escaping bool, mutate ...func(*Options)) *Source {
	t.Helper()
	w, err := gitserver.Init(filepath.Join(t.TempDir(), "repo"))
	require.NoError(t, err)
	require.NoError(t, w.WriteFiles(map[string]string{
		"pipelines/web.yaml":     "name: web\n",
		"pipelines/sub/api.yaml": "name: api\n",
		"README.md":              "# readme\n",
		"tools/run.sh":           "#!/bin/sh\n",
	}))
	require.NoError(t, os.Chmod(filepath.Join(w.Dir, "tools/run.sh"), 0o755))
	links := map[string]string{
		"web-link":            "pipelines/web.yaml",
		"dir-link":            "pipelines",
		"pipelines/up-link":   "../README.md",
		"pipelines/sub/chain": "../../web-link",
	}
	if escaping {
		links["escape"] = "../../etc/passwd"
		links["absolute"] = "/etc/passwd"
		links["pipelines/escape-dir"] = "../.."
		links["loop"] = "loop"
		links["dangling"] = "nope.yaml"
	}
	for name, target := range links {
		require.NoError(t, os.Symlink(target, filepath.Join(w.Dir, filepath.FromSlash(name))))
	}
	_, err = w.Commit("Tree with symlinks")
	require.NoError(t, err)
	o := DefaultOptions()
	o.URL, o.Branch, o.CacheDir = w.Dir, "main", t.TempDir()
	for _, m := range mutate {
		m(&o)
	}
	s, err := New(o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestSnapshotFSPassesFSTest(t *testing.T) {
	for _, path := range []string{"", "tools"} {
		t.Run("path="+path, func(t *testing.T) {
			s := symlinkRepo(t, false, func(o *Options) { o.Path = path })
			snap, _ := poll(t, s)
			expected := []string{"run.sh"}
			if path == "" {
				expected = []string{"pipelines/web.yaml", "pipelines/sub/chain", "README.md", "tools/run.sh", "web-link", "dir-link"}
			}
			require.NoError(t, fstest.TestFS(snap.FS, expected...))
		})
	}
}

func TestSnapshotFSSymlinks(t *testing.T) {
	s := symlinkRepo(t, true)
	snap, _ := poll(t, s)
	fsys := snap.FS
	tests := []struct {
		name       string
		target     string // ReadLink's answer; "" when name is not a symlink
		content    string // what ReadFile gives through the link
		openErr    error  // Open's error instead
		lstatMode  fs.FileMode
		statIsDir  bool
		lstatError error
	}{
		{name: "pipelines/web.yaml", content: "name: web\n", lstatMode: 0o644},
		{name: "tools/run.sh", content: "#!/bin/sh\n", lstatMode: 0o755},
		{name: "web-link", target: "pipelines/web.yaml", content: "name: web\n", lstatMode: fs.ModeSymlink | 0o777},
		{name: "dir-link", target: "pipelines", statIsDir: true, lstatMode: fs.ModeSymlink | 0o777},
		{name: "dir-link/sub/api.yaml", content: "name: api\n", lstatMode: 0o644},
		{name: "pipelines/up-link", target: "../README.md", content: "# readme\n", lstatMode: fs.ModeSymlink | 0o777},
		{name: "pipelines/sub/chain", target: "../../web-link", content: "name: web\n", lstatMode: fs.ModeSymlink | 0o777},
		{name: "escape", target: "../../etc/passwd", openErr: ErrSymlinkEscapes, lstatMode: fs.ModeSymlink | 0o777},
		{name: "absolute", target: "/etc/passwd", openErr: ErrSymlinkEscapes, lstatMode: fs.ModeSymlink | 0o777},
		{name: "pipelines/escape-dir", target: "../..", openErr: ErrSymlinkEscapes, lstatMode: fs.ModeSymlink | 0o777},
		{name: "loop", target: "loop", openErr: fs.ErrInvalid /* any error */, lstatMode: fs.ModeSymlink | 0o777},
		{name: "dangling", target: "nope.yaml", openErr: fs.ErrNotExist, lstatMode: fs.ModeSymlink | 0o777},
		{name: "missing.yaml", openErr: fs.ErrNotExist, lstatError: fs.ErrNotExist},
		{name: "pipelines/web.yaml/x", openErr: fs.ErrNotExist, lstatError: fs.ErrNotExist},
		{name: "../outside", openErr: fs.ErrInvalid, lstatError: fs.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := fsys.Lstat(tt.name)
			if tt.lstatError != nil {
				assert.ErrorIs(t, err, tt.lstatError)
			} else {
				require.NoError(t, err)
				assert.Equal(t, tt.lstatMode, info.Mode())
				assert.Equal(t, filepath.Base(tt.name), info.Name())
				assert.Equal(t, snap.Time, info.ModTime())
			}

			target, err := fsys.ReadLink(tt.name)
			if tt.target != "" {
				require.NoError(t, err)
				assert.Equal(t, tt.target, target)
				assert.Equal(t, int64(len(tt.target)), info.Size(), "a symlink's size is its target's length")
			} else {
				assert.Error(t, err)
			}

			data, err := fs.ReadFile(fsys, tt.name)
			switch {
			case tt.openErr == fs.ErrInvalid && tt.name == "loop":
				assert.ErrorContains(t, err, "too many levels of symbolic links")
			case tt.openErr != nil:
				assert.ErrorIs(t, err, tt.openErr)
				_, err = fsys.Open(tt.name)
				assert.ErrorIs(t, err, tt.openErr)
			case tt.statIsDir:
				info, err := fs.Stat(fsys, tt.name)
				require.NoError(t, err)
				assert.True(t, info.IsDir())
				assert.Equal(t, tt.name, info.Name())
			default:
				require.NoError(t, err)
				assert.Equal(t, tt.content, string(data))
			}
		})
	}
}

func TestSnapshotFSFiles(t *testing.T) {
	s := symlinkRepo(t, false, func(o *Options) { o.Path = "pipelines" })
	snap, _ := poll(t, s)

	f, err := snap.FS.Open("sub/api.yaml")
	require.NoError(t, err)
	info, err := f.Stat()
	require.NoError(t, err)
	assert.Equal(t, int64(len("name: api\n")), info.Size())
	assert.False(t, info.IsDir())
	buf := make([]byte, 4)
	n, err := f.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "name", string(buf[:n]))
	rest, err := io.ReadAll(f)
	require.NoError(t, err)
	assert.Equal(t, ": api\n", string(rest))
	require.NoError(t, f.Close())

	d, err := snap.FS.Open(".")
	require.NoError(t, err)
	_, err = d.Read(buf)
	assert.ErrorContains(t, err, "is a directory")
	rd, ok := d.(fs.ReadDirFile)
	require.True(t, ok)
	first, err := rd.ReadDir(1)
	require.NoError(t, err)
	require.Len(t, first, 1)
	assert.Equal(t, "sub", first[0].Name(), "entries sorted by name")
	assert.True(t, first[0].IsDir())

	_, err = fs.ReadFile(snap.FS, "sub")
	assert.ErrorContains(t, err, "is a directory")
	_, err = fs.ReadDir(snap.FS, "web.yaml")
	assert.ErrorContains(t, err, "not a directory")
	_, err = fs.Stat(snap.FS, "README.md")
	assert.ErrorIs(t, err, fs.ErrNotExist, "files outside the path are not visible")

	// A link that stays in the repository but leaves the source's path is not followed.
	target, err := snap.FS.ReadLink("up-link")
	require.NoError(t, err)
	assert.Equal(t, "../README.md", target)
	_, err = fs.ReadFile(snap.FS, "up-link")
	assert.ErrorIs(t, err, ErrSymlinkEscapes)

	matches, err := fs.Glob(snap.FS, "*.yaml")
	require.NoError(t, err)
	assert.Equal(t, []string{"web.yaml"}, matches)
}

func TestSnapshotPathMissing(t *testing.T) {
	s := symlinkRepo(t, false, func(o *Options) { o.Path = "nope" })
	_, _, err := s.Poll(t.Context())
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrPathNotFound)
	assert.Equal(t, KindNotFound, KindOf(err))
	assert.Contains(t, err.Error(), `directory "nope"`)
}
