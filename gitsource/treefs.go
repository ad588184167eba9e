package gitsource

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// ErrSymlinkEscapes is the cause when Open, Stat or ReadFile would follow a symlink out of
// the file system (an absolute target, or a relative one climbing above the root). Lstat and
// ReadLink still show such a link, so the planner can name it in its error.
var ErrSymlinkEscapes = errors.New("symlink leads outside the file system")

// maxSymlinkHops is where following symlinks stops, as in Linux (ELOOP).
const maxSymlinkHops = 40

// treeFS is an fs.FS over a Git tree, read from the object store without a checkout. Every
// method takes the store's lock, since go-git's storage is not safe for concurrent use; open
// files hold their content and need no lock.
type treeFS struct {
	st      *store
	root    plumbing.Hash
	modTime time.Time
	trees   map[plumbing.Hash]*object.Tree // decoded trees, guarded by st.mu
}

var (
	_ fs.FS         = (*treeFS)(nil)
	_ fs.ReadLinkFS = (*treeFS)(nil)
	_ fs.ReadFileFS = (*treeFS)(nil)
	_ fs.ReadDirFS  = (*treeFS)(nil)
	_ fs.StatFS     = (*treeFS)(nil)
)

func newTreeFS(st *store, root plumbing.Hash, modTime time.Time) *treeFS {
	return &treeFS{st: st, root: root, modTime: modTime, trees: map[plumbing.Hash]*object.Tree{}}
}

// node is a resolved name: a tree entry, or the root.
type node struct {
	name string
	mode filemode.FileMode
	hash plumbing.Hash
}

// Open opens name, following symlinks inside the file system.
func (f *treeFS) Open(name string) (fs.File, error) {
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	n, err := f.resolveLocked("open", name, true)
	if err != nil {
		return nil, err
	}
	info, err := f.infoLocked(n)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	if n.mode == filemode.Dir {
		entries, err := f.readDirLocked(n)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		return &dirFile{info: info, entries: entries, path: name}, nil
	}
	data, err := f.blobLocked(n.hash)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return &file{info: info, Reader: bytes.NewReader(data)}, nil
}

// ReadFile returns the content of file name, following symlinks inside the file system.
func (f *treeFS) ReadFile(name string) ([]byte, error) {
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	n, err := f.resolveLocked("readfile", name, true)
	if err != nil {
		return nil, err
	}
	if n.mode == filemode.Dir {
		return nil, &fs.PathError{Op: "readfile", Path: name, Err: errors.New("is a directory")}
	}
	data, err := f.blobLocked(n.hash)
	if err != nil {
		return nil, &fs.PathError{Op: "readfile", Path: name, Err: err}
	}
	return data, nil
}

// ReadDir lists directory name sorted by file name, following symlinks inside the file system.
func (f *treeFS) ReadDir(name string) ([]fs.DirEntry, error) {
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	n, err := f.resolveLocked("readdir", name, true)
	if err != nil {
		return nil, err
	}
	if n.mode != filemode.Dir {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: errors.New("not a directory")}
	}
	entries, err := f.readDirLocked(n)
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: err}
	}
	return entries, nil
}

// Stat describes name, following symlinks inside the file system.
func (f *treeFS) Stat(name string) (fs.FileInfo, error) { return f.stat("stat", name, true) }

// Lstat describes name without following a final symlink: a symlink is fs.ModeSymlink.
func (f *treeFS) Lstat(name string) (fs.FileInfo, error) { return f.stat("lstat", name, false) }

func (f *treeFS) stat(op, name string, follow bool) (fs.FileInfo, error) {
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	n, err := f.resolveLocked(op, name, follow)
	if err != nil {
		return nil, err
	}
	info, err := f.infoLocked(n)
	if err != nil {
		return nil, &fs.PathError{Op: op, Path: name, Err: err}
	}
	return info, nil
}

// ReadLink returns the target of symlink name, as written in the commit.
func (f *treeFS) ReadLink(name string) (string, error) {
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	n, err := f.resolveLocked("readlink", name, false)
	if err != nil {
		return "", err
	}
	if n.mode != filemode.Symlink {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: fs.ErrInvalid}
	}
	target, err := f.blobLocked(n.hash)
	if err != nil {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: err}
	}
	return string(target), nil
}

// resolveLocked walks name from the root. Symlinks in directory components are always
// followed, a final one only when follow is set; a symlink leading out of the file system is
// an error rather than a path outside it.
func (f *treeFS) resolveLocked(op, name string, follow bool) (node, error) {
	fail := func(err error) (node, error) { return node{}, &fs.PathError{Op: op, Path: name, Err: err} }
	if !fs.ValidPath(name) {
		return fail(fs.ErrInvalid)
	}
	if f.st.storage == nil {
		return fail(errors.New("git cache is closed"))
	}
	p, hops := name, 0
restart:
	cur := node{name: path.Base(name), mode: filemode.Dir, hash: f.root}
	if p == "." {
		return cur, nil
	}
	parts := strings.Split(p, "/")
	for i, part := range parts {
		if cur.mode != filemode.Dir {
			return fail(fs.ErrNotExist)
		}
		t, err := f.treeLocked(cur.hash)
		if err != nil {
			return fail(err)
		}
		e, err := t.FindEntry(part)
		if err != nil || e.Mode == filemode.Submodule {
			// A submodule's files are not in this repository; it does not exist here.
			return fail(fs.ErrNotExist)
		}
		cur = node{name: part, mode: e.Mode, hash: e.Hash}
		if cur.mode != filemode.Symlink || (i == len(parts)-1 && !follow) {
			continue
		}
		if hops++; hops > maxSymlinkHops {
			return fail(errors.New("too many levels of symbolic links"))
		}
		target, err := f.blobLocked(cur.hash)
		if err != nil {
			return fail(err)
		}
		next := path.Join(path.Join(parts[:i]...), string(target))
		if path.IsAbs(string(target)) || next == ".." || strings.HasPrefix(next, "../") {
			return fail(ErrSymlinkEscapes)
		}
		p = path.Join(append([]string{next}, parts[i+1:]...)...)
		goto restart
	}
	// A followed symlink answers to the name it was asked by, as os.Stat does.
	cur.name = path.Base(name)
	return cur, nil
}

// treeLocked returns the decoded tree h, decoding each tree once per snapshot.
func (f *treeFS) treeLocked(h plumbing.Hash) (*object.Tree, error) {
	if t, ok := f.trees[h]; ok {
		return t, nil
	}
	t, err := object.GetTree(f.st.storage, h)
	if err != nil {
		return nil, err
	}
	f.trees[h] = t
	return t, nil
}

// blobLocked reads the content of blob h.
func (f *treeFS) blobLocked(h plumbing.Hash) ([]byte, error) {
	obj, err := f.st.storage.EncodedObject(plumbing.BlobObject, h)
	if err != nil {
		return nil, err
	}
	r, err := obj.Reader()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	buf := make([]byte, 0, obj.Size())
	w := bytes.NewBuffer(buf)
	if _, err := io.Copy(w, r); err != nil {
		return nil, err
	}
	return w.Bytes(), nil
}

// infoLocked describes n, reading the size of a blob from its object header.
func (f *treeFS) infoLocked(n node) (fs.FileInfo, error) {
	info := &fileInfo{name: path.Base(n.name), mode: n.mode, modTime: f.modTime}
	if n.mode != filemode.Dir {
		size, err := f.st.storage.EncodedObjectSize(n.hash)
		if err != nil {
			return nil, err
		}
		info.size = size
	}
	return info, nil
}

// readDirLocked lists directory n, sorted by name as io/fs requires (Git sorts directories
// as if their names ended in "/").
func (f *treeFS) readDirLocked(n node) ([]fs.DirEntry, error) {
	t, err := f.treeLocked(n.hash)
	if err != nil {
		return nil, err
	}
	entries := make([]fs.DirEntry, 0, len(t.Entries))
	for _, e := range t.Entries {
		if e.Mode == filemode.Submodule {
			continue
		}
		entries = append(entries, &dirEntry{fs: f, node: node{name: e.Name, mode: e.Mode, hash: e.Hash}})
	}
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return entries, nil
}

// fileInfo describes a tree entry.
type fileInfo struct {
	name    string
	mode    filemode.FileMode
	size    int64
	modTime time.Time
}

func (i *fileInfo) Name() string       { return i.name }
func (i *fileInfo) Size() int64        { return i.size }
func (i *fileInfo) ModTime() time.Time { return i.modTime }
func (i *fileInfo) IsDir() bool        { return i.mode == filemode.Dir }
func (i *fileInfo) Sys() any           { return nil }
func (i *fileInfo) Mode() fs.FileMode  { return fsMode(i.mode) }

// fsMode maps Git's few file modes to io/fs modes.
func fsMode(m filemode.FileMode) fs.FileMode {
	switch m {
	case filemode.Dir:
		return fs.ModeDir | 0o755
	case filemode.Executable:
		return 0o755
	case filemode.Symlink:
		return fs.ModeSymlink | 0o777
	default:
		return 0o644
	}
}

// dirEntry is one entry of a directory listing; Info reads the size lazily.
type dirEntry struct {
	fs   *treeFS
	node node
}

func (e *dirEntry) Name() string      { return e.node.name }
func (e *dirEntry) IsDir() bool       { return e.node.mode == filemode.Dir }
func (e *dirEntry) Type() fs.FileMode { return fsMode(e.node.mode).Type() }
func (e *dirEntry) String() string    { return fs.FormatDirEntry(e) }
func (e *dirEntry) Info() (fs.FileInfo, error) {
	e.fs.st.mu.Lock()
	defer e.fs.st.mu.Unlock()
	if e.fs.st.storage == nil {
		return nil, errors.New("git cache is closed")
	}
	return e.fs.infoLocked(e.node)
}

// file is an open regular file or symlink target, read into memory at Open.
type file struct {
	*bytes.Reader
	info fs.FileInfo
}

func (f *file) Stat() (fs.FileInfo, error) { return f.info, nil }
func (f *file) Close() error               { return nil }

// dirFile is an open directory.
type dirFile struct {
	info    fs.FileInfo
	path    string
	entries []fs.DirEntry
	offset  int
}

func (d *dirFile) Stat() (fs.FileInfo, error) { return d.info, nil }
func (d *dirFile) Close() error               { return nil }
func (d *dirFile) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.path, Err: errors.New("is a directory")}
}

// ReadDir returns the next n entries, or all remaining ones when n <= 0 (fs.ReadDirFile).
func (d *dirFile) ReadDir(n int) ([]fs.DirEntry, error) {
	rest := d.entries[d.offset:]
	if n <= 0 {
		d.offset = len(d.entries)
		return rest, nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	n = min(n, len(rest))
	d.offset += n
	return rest[:n], nil
}
