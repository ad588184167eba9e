package planner

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// A render's inputs are its parameters (namespace, image, tag, values…) and every file and
// directory kustomize looked at. recordingFS notes each look and what it saw; the next
// snapshot replays the looks, and when all see the same thing the cached release is reused
// without running kustomize again. Looks under the render's own scratch directory are not
// inputs and are not noted.

// opKind names a filesystem look.
type opKind byte

const (
	opRead opKind = 'r'
	opDir  opKind = 'd'
	opList opKind = 'l'
	opAbs  opKind = 'a'
	opGlob opKind = 'g'
	opWalk opKind = 'w'
	opHas  opKind = 'e'
)

// fsOp is one look and a digest of what it saw.
type fsOp struct {
	kind   opKind
	arg    string
	digest string
}

// recordingFS is a read-through filesystem that notes every look.
type recordingFS struct {
	filesys.FileSystem
	ignore string
	// hidden is a file whose looks are not noted while ebb has stood in its own version of it.
	hidden string
	ops    []fsOp
}

func newRecordingFS(fsys filesys.FileSystem, ignorePrefix string) *recordingFS {
	return &recordingFS{FileSystem: fsys, ignore: ignorePrefix}
}

func (r *recordingFS) note(kind opKind, arg, digest string) {
	if strings.HasPrefix(arg, r.ignore) || (r.hidden != "" && arg == r.hidden) {
		return
	}
	r.ops = append(r.ops, fsOp{kind: kind, arg: arg, digest: digest})
}

// ReadFile notes the file's content.
func (r *recordingFS) ReadFile(path string) ([]byte, error) {
	data, err := r.FileSystem.ReadFile(path)
	r.note(opRead, path, digestBytes(data, err))
	return data, err
}

// Open notes the file's content, as ReadFile would see it.
func (r *recordingFS) Open(path string) (filesys.File, error) {
	f, err := r.FileSystem.Open(path)
	data, rerr := r.FileSystem.ReadFile(path)
	if err == nil {
		r.note(opRead, path, digestBytes(data, rerr))
	}
	return f, err
}

// IsDir notes whether path is a directory.
func (r *recordingFS) IsDir(path string) bool {
	ok := r.FileSystem.IsDir(path)
	r.note(opDir, path, strconv.FormatBool(ok))
	return ok
}

// Exists notes whether path exists.
func (r *recordingFS) Exists(path string) bool {
	ok := r.FileSystem.Exists(path)
	r.note(opHas, path, strconv.FormatBool(ok))
	return ok
}

// ReadDir notes the directory's entries.
func (r *recordingFS) ReadDir(path string) ([]string, error) {
	names, err := r.FileSystem.ReadDir(path)
	r.note(opList, path, digestList(names, err))
	return names, err
}

// CleanedAbs notes how the path splits into directory and file.
func (r *recordingFS) CleanedAbs(path string) (filesys.ConfirmedDir, string, error) {
	d, f, err := r.FileSystem.CleanedAbs(path)
	r.note(opAbs, path, digestList([]string{string(d), f}, err))
	return d, f, err
}

// Glob notes the matches.
func (r *recordingFS) Glob(pattern string) ([]string, error) {
	names, err := r.FileSystem.Glob(pattern)
	r.note(opGlob, pattern, digestList(names, err))
	return names, err
}

// Walk notes every path visited.
func (r *recordingFS) Walk(path string, walkFn filepath.WalkFunc) error {
	var seen []string
	err := r.FileSystem.Walk(path, func(p string, info os.FileInfo, err error) error {
		seen = append(seen, p)
		return walkFn(p, info, err)
	})
	r.note(opWalk, path, digestList(seen, err))
	return err
}

// replay repeats the recorded looks on another snapshot's filesystem and reports whether each
// sees what it saw before.
func replay(ops []fsOp, fsys filesys.FileSystem) bool {
	for _, op := range ops {
		if observe(fsys, op.kind, op.arg) != op.digest {
			return false
		}
	}
	return true
}

// observe repeats one look. It digests results exactly as recordingFS does.
func observe(fsys filesys.FileSystem, kind opKind, arg string) string {
	switch kind {
	case opRead:
		return digestBytes(fsys.ReadFile(arg))
	case opDir:
		return strconv.FormatBool(fsys.IsDir(arg))
	case opHas:
		return strconv.FormatBool(fsys.Exists(arg))
	case opList:
		return digestList(fsys.ReadDir(arg))
	case opAbs:
		d, f, err := fsys.CleanedAbs(arg)
		return digestList([]string{string(d), f}, err)
	case opGlob:
		return digestList(fsys.Glob(arg))
	case opWalk:
		var seen []string
		err := fsys.Walk(arg, func(p string, _ os.FileInfo, err error) error {
			seen = append(seen, p)
			return err
		})
		return digestList(seen, err)
	}
	return ""
}

func digestBytes(data []byte, err error) string {
	if err != nil {
		return "error"
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func digestList(names []string, err error) string {
	if err != nil {
		return "error"
	}
	h := sha256.New()
	for _, n := range names {
		_, _ = io.WriteString(h, n)
		_, _ = h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}
