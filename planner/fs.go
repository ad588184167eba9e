package planner

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"

	"sigs.k8s.io/kustomize/kyaml/filesys"

	"ebb.dev/ebb/planner/strictyaml"
)

// repoRoot is where the repository sits in the in-memory filesystem kustomize reads. Nothing
// else from the host is in that filesystem, so no kustomization can reach outside the
// repository, whatever paths it names.
const repoRoot = "/repo"

// maxSymlinkHops bounds symlink chains, as the kernel does.
const maxSymlinkHops = 40

// errOutsideRepo says a path or symlink leads outside the repository.
var errOutsideRepo = errors.New("leads outside the repository")

// Repo is one snapshot of a repository: a Git commit from gitsource, or a local directory
// through os.DirFS. It reads symlinks through fs.ReadLinkFS when the filesystem has it, and
// never follows one out of the repository.
type Repo struct {
	fsys fs.FS

	once   sync.Once
	mem    filesys.FileSystem
	memErr error
	// setsSchema is whether a kustomization may set kustomize's OpenAPI schema (it mentions
	// `openapi`): its builds cannot run at the same time as others.
	setsSchema bool
	// oversized holds the size of each file, by its path in mem, that was over MaxFileBytes
	// and so was not copied: mem holds an empty file in its place, which renders must not
	// read. Written once, with mem.
	oversized map[string]int64
	// shapes remembers, by path in mem, each manifest's check against the limits of its
	// shape: every stage rendering it reads the same file.
	shapes sync.Map // string -> shapeResult
}

// shapeResult is a manifest's check: its number of documents, or the limit it exceeds.
type shapeResult struct {
	docs int
	err  error
}

// NewRepo wraps a filesystem rooted at the repository root (or at the configured path inside
// it). The filesystem must not change while the Repo is used; a new snapshot is a new Repo.
func NewRepo(fsys fs.FS) *Repo {
	return &Repo{fsys: fsys}
}

// FS returns the repository's filesystem.
func (r *Repo) FS() fs.FS { return r.fsys }

// lstat returns the FileInfo of name without following a final symlink.
func (r *Repo) lstat(name string) (fs.FileInfo, error) {
	if rl, ok := r.fsys.(fs.ReadLinkFS); ok {
		return rl.Lstat(name)
	}
	return fs.Stat(r.fsys, name)
}

// readLink returns a symlink's target.
func (r *Repo) readLink(name string) (string, error) {
	if rl, ok := r.fsys.(fs.ReadLinkFS); ok {
		return rl.ReadLink(name)
	}
	return "", fmt.Errorf("read link %s: %w", name, fs.ErrInvalid)
}

// resolve follows every symlink in name, component by component, and returns the real path
// inside the repository, or errOutsideRepo. The path need not exist past its symlinks.
func (r *Repo) resolve(name string) (string, error) {
	if err := checkRelativePath(name); err != nil {
		return "", fmt.Errorf("%s %w", name, errOutsideRepo)
	}
	pending := splitPath(path.Clean(name))
	var done []string
	hops := 0
	for len(pending) > 0 {
		comp := pending[0]
		pending = pending[1:]
		if comp == ".." {
			if len(done) == 0 {
				return "", fmt.Errorf("%s %w", name, errOutsideRepo)
			}
			done = done[:len(done)-1]
			continue
		}
		cur := path.Join(append(done, comp)...)
		fi, err := r.lstat(cur)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			done = append(done, comp)
			continue
		}
		if hops++; hops > maxSymlinkHops {
			return "", fmt.Errorf("%s: too many levels of symbolic links", name)
		}
		target, err := r.readLink(cur)
		if err != nil {
			return "", err
		}
		if path.IsAbs(target) || strings.HasPrefix(target, `\`) {
			return "", fmt.Errorf("%s: symlink %s points to %s, which %w", name, cur, target, errOutsideRepo)
		}
		// The target is relative to the link's directory, which is what done holds now.
		pending = append(splitPath(target), pending...)
	}
	if len(done) == 0 {
		return ".", nil
	}
	return path.Join(done...), nil
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// isDir reports whether name (resolved) is a directory of the repository.
func (r *Repo) isDir(name string) bool {
	fi, err := fs.Stat(r.fsys, name)
	return err == nil && fi.IsDir()
}

// memFS returns the repository copied into an in-memory filesystem under repoRoot, with the
// default limit per file.
func (r *Repo) memFS() (filesys.FileSystem, error) { return r.memFSWith(DefaultLimits().MaxFileBytes) }

// memFSWith returns the repository copied into an in-memory filesystem under repoRoot, built
// once per snapshot, with the limit per file of its first caller. Symlinks inside the
// repository are copied as what they point to; symlinks leading out of it are left out, so to
// kustomize they do not exist. A file over maxFileBytes is not read (see oversized).
func (r *Repo) memFSWith(maxFileBytes int64) (filesys.FileSystem, error) {
	r.once.Do(func() {
		mem := filesys.MakeFsInMemory()
		if err := mem.MkdirAll(repoRoot); err != nil {
			r.memErr = err
			return
		}
		r.oversized = map[string]int64{}
		r.memErr = r.copyTree(mem, ".", ".", 0, maxFileBytes)
		r.mem = mem
	})
	return r.mem, r.memErr
}

// shape checks a manifest of mem against the limits of its shape, once per snapshot.
func (r *Repo) shape(p string, data []byte, l strictyaml.Limits) (int, error) {
	if v, ok := r.shapes.Load(p); ok {
		res := v.(shapeResult)
		return res.docs, res.err
	}
	docs, err := strictyaml.Check(repoPath(p), data, l)
	r.shapes.Store(p, shapeResult{docs, err})
	return docs, err
}

// copyTree copies the directory src of the repository to dst in mem. Hidden directories
// (.git, .github) are skipped: they are not manifests.
func (r *Repo) copyTree(mem filesys.FileSystem, src, dst string, depth int, maxFileBytes int64) error {
	if depth > maxSymlinkHops {
		return nil // a symlink cycle; what was copied so far is enough
	}
	entries, err := fs.ReadDir(r.fsys, src)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", src, err)
	}
	if err := mem.MkdirAll(path.Join(repoRoot, dst)); err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		from, to := path.Join(src, name), path.Join(dst, name)
		if e.Type()&fs.ModeSymlink != 0 {
			real, err := r.resolve(from)
			if err != nil {
				continue // leads outside, or is broken: invisible to kustomize
			}
			fi, err := fs.Stat(r.fsys, real)
			if err != nil {
				continue
			}
			if fi.IsDir() {
				if err := r.copyTree(mem, real, to, depth+1, maxFileBytes); err != nil {
					return err
				}
				continue
			}
			from = real
		} else if e.IsDir() {
			if strings.HasPrefix(name, ".") {
				continue
			}
			if err := r.copyTree(mem, from, to, depth, maxFileBytes); err != nil {
				return err
			}
			continue
		} else if !e.Type().IsRegular() {
			continue
		}
		data, size, err := readLimited(r.fsys, from, maxFileBytes)
		if errors.Is(err, errTooBig) {
			// A stand-in that differs from any other content, so that the cache of renders
			// sees the file change; renders refuse to read it.
			r.oversized[path.Join(repoRoot, to)] = size
			data = fmt.Appendf(nil, "# ebb: not read: %d bytes, over the limit of %d per file\n", size, maxFileBytes)
		} else if err != nil {
			return fmt.Errorf("read %s: %w", from, err)
		}
		if slices.Contains(kustomizationFiles, name) && bytes.Contains(data, []byte("openapi")) {
			r.setsSchema = true
		}
		if err := mem.WriteFile(path.Join(repoRoot, to), data); err != nil {
			return err
		}
	}
	return nil
}
