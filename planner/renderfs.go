package planner

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/kustomize/kyaml/filesys"

	"ebb.dev/ebb/planner/strictyaml"
)

// errReadOnly says a render tried to change the repository. The snapshot's filesystem is
// shared by every render of it, which may run at the same time.
var errReadOnly = errors.New("the repository is read-only while rendering")

// renderFS is one render's view of a snapshot: the repository's files, shared with the other
// renders of the snapshot and never written; ebb's stand-in versions of some of them, seen by
// this render only; and a private scratch directory under scratchRoot for the kustomizations
// ebb writes. Nothing one render does is seen by another, so renders can run at once.
//
// It notes every look at the repository and what it saw (see cache.go). Looks at a stand-in's
// content and at the scratch directory are not inputs and are not noted.
//
// It also keeps the render within its Limits: it refuses a file over MaxFileBytes, a read
// past MaxRenderBytes or MaxDocuments, a manifest whose shape exceeds a limit, and any read
// after the render's deadline, so that kustomize stops at its next file. The first limit hit
// is kept in exceeded, located, for the render to report instead of kustomize's wrapping of
// it.
type renderFS struct {
	repo     filesys.FileSystem
	scratch  filesys.FileSystem
	standIns map[string][]byte
	ops      []fsOp

	snapshot *Repo
	limits   Limits
	deadline time.Time
	read     int64 // bytes read from the repository
	docs     int   // YAML documents in what was read
	looked   int   // files read and directories listed before the deadline
	exceeded error
}

func newRenderFS(repo filesys.FileSystem) *renderFS {
	return &renderFS{repo: repo, scratch: filesys.MakeFsInMemory(), standIns: map[string][]byte{}, limits: DefaultLimits()}
}

// limited makes the render keep to the limits of a snapshot, until the deadline.
func (r *renderFS) limited(snapshot *Repo, limits Limits, deadline time.Time) *renderFS {
	r.snapshot, r.limits, r.deadline = snapshot, limits, deadline
	return r
}

// errPastDeadline stops a render whose time is up at its next look at the repository.
var errPastDeadline = errors.New("the render is past its deadline")

// exceed records the first limit the render hit and returns it.
func (r *renderFS) exceed(err error) error {
	if r.exceeded == nil {
		r.exceeded = err
	}
	return r.exceeded
}

// checkRead keeps a read of a repository file within the limits.
func (r *renderFS) checkRead(p string, data []byte) error {
	file := repoPath(p)
	if r.snapshot != nil {
		if size, ok := r.snapshot.oversized[cleanAbs(p)]; ok {
			return r.exceed(fileTooBig(file, size, r.limits.MaxFileBytes))
		}
	}
	if r.read += int64(len(data)); r.read > r.limits.MaxRenderBytes {
		return r.exceed(atFile(file, "reading it makes the render read %s, over the limit of %s per render (limits.maxRenderBytes)",
			byteSize(r.read), byteSize(r.limits.MaxRenderBytes)))
	}
	if r.snapshot == nil || !isManifestName(p) {
		return nil
	}
	docs, err := r.snapshot.shape(cleanAbs(p), data, r.limits.manifestLimits())
	var le *strictyaml.LimitError
	if errors.As(err, &le) {
		return r.exceed(&strictyaml.Error{File: le.At.File, Pos: le.At.Pos, Msg: fmt.Sprintf("%s (%s)", le.At.Msg, setting[le.Limit])})
	}
	if r.docs += docs; r.docs > r.limits.MaxDocuments {
		return r.exceed(atFile(file, "reading it makes the render read %d YAML documents, more than %d (limits.maxDocuments)", r.docs, r.limits.MaxDocuments))
	}
	return nil
}

// isManifestName reports whether kustomize may read a file as YAML: by its extension, or the
// extensionless kustomization name.
func isManifestName(p string) bool {
	switch path.Ext(p) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return path.Base(p) == "Kustomization"
}

// pastDeadline reports whether the render's time is up.
func (r *renderFS) pastDeadline() bool {
	return !r.deadline.IsZero() && time.Now().After(r.deadline)
}

var _ filesys.FileSystem = (*renderFS)(nil)

// cleanAbs is the absolute path the in-memory filesystems resolve p to.
func cleanAbs(p string) string { return path.Clean("/" + p) }

func inScratch(p string) bool {
	p = cleanAbs(p)
	return p == scratchRoot || strings.HasPrefix(p, scratchRoot+"/")
}

// standIn makes this render read content instead of the repository's file.
func (r *renderFS) standIn(file string, content []byte) { r.standIns[cleanAbs(file)] = content }

func (r *renderFS) note(kind opKind, arg, digest string) {
	r.ops = append(r.ops, fsOp{kind: kind, arg: arg, digest: digest})
}

// Create creates a file in the scratch directory.
func (r *renderFS) Create(p string) (filesys.File, error) {
	if !inScratch(p) {
		return nil, errReadOnly
	}
	return r.scratch.Create(p)
}

// Mkdir makes a directory in the scratch directory.
func (r *renderFS) Mkdir(p string) error {
	if !inScratch(p) {
		return errReadOnly
	}
	return r.scratch.Mkdir(p)
}

// MkdirAll makes a directory and its parents in the scratch directory.
func (r *renderFS) MkdirAll(p string) error {
	if !inScratch(p) {
		return errReadOnly
	}
	return r.scratch.MkdirAll(p)
}

// RemoveAll removes from the scratch directory.
func (r *renderFS) RemoveAll(p string) error {
	if !inScratch(p) {
		return errReadOnly
	}
	return r.scratch.RemoveAll(p)
}

// WriteFile writes a file in the scratch directory.
func (r *renderFS) WriteFile(p string, data []byte) error {
	if !inScratch(p) {
		return errReadOnly
	}
	return r.scratch.WriteFile(p, data)
}

// ReadFile notes the file's content; a stand-in's content is not noted.
func (r *renderFS) ReadFile(p string) ([]byte, error) {
	if inScratch(p) {
		return r.scratch.ReadFile(p)
	}
	if data, ok := r.standIns[cleanAbs(p)]; ok {
		return append([]byte(nil), data...), nil
	}
	if r.pastDeadline() {
		return nil, r.exceed(errPastDeadline)
	}
	r.looked++
	data, err := r.repo.ReadFile(p)
	r.note(opRead, p, digestBytes(data, err))
	if err == nil {
		if err := r.checkRead(p, data); err != nil {
			return nil, err
		}
	}
	return data, err
}

// peek reads a repository file for ebb's own look at it, noting it as ReadFile does but
// counting it against no limit but the size of one file: kustomize's own read of it counts.
func (r *renderFS) peek(p string) ([]byte, error) {
	if r.snapshot != nil {
		if size, ok := r.snapshot.oversized[cleanAbs(p)]; ok {
			return nil, r.exceed(fileTooBig(repoPath(p), size, r.limits.MaxFileBytes))
		}
	}
	data, err := r.repo.ReadFile(p)
	r.note(opRead, p, digestBytes(data, err))
	return data, err
}

// Open opens a copy of the file, as ReadFile sees it: an in-memory file open in one render
// must not be open in another.
func (r *renderFS) Open(p string) (filesys.File, error) {
	if inScratch(p) {
		return r.scratch.Open(p)
	}
	data, err := r.ReadFile(p)
	if err != nil {
		return nil, err
	}
	f := filesys.MakeFsInMemory()
	if err := f.WriteFile("/file", data); err != nil {
		return nil, err
	}
	return f.Open("/file")
}

// IsDir notes whether p is a directory.
func (r *renderFS) IsDir(p string) bool {
	if inScratch(p) {
		return r.scratch.IsDir(p)
	}
	ok := r.repo.IsDir(p)
	r.note(opDir, p, strconv.FormatBool(ok))
	return ok
}

// Exists notes whether p exists.
func (r *renderFS) Exists(p string) bool {
	if inScratch(p) {
		return r.scratch.Exists(p)
	}
	ok := r.repo.Exists(p)
	r.note(opHas, p, strconv.FormatBool(ok))
	return ok
}

// ReadDir notes the directory's entries.
func (r *renderFS) ReadDir(p string) ([]string, error) {
	if inScratch(p) {
		return r.scratch.ReadDir(p)
	}
	if r.pastDeadline() {
		return nil, r.exceed(errPastDeadline)
	}
	r.looked++
	names, err := r.repo.ReadDir(p)
	r.note(opList, p, digestNames(names, err))
	return names, err
}

// CleanedAbs notes how the path splits into directory and file.
func (r *renderFS) CleanedAbs(p string) (filesys.ConfirmedDir, string, error) {
	if inScratch(p) {
		return r.scratch.CleanedAbs(p)
	}
	d, f, err := r.repo.CleanedAbs(p)
	r.note(opAbs, p, digestList([]string{string(d), f}, err))
	return d, f, err
}

// Glob notes the matches.
func (r *renderFS) Glob(pattern string) ([]string, error) {
	if inScratch(pattern) {
		return r.scratch.Glob(pattern)
	}
	names, err := r.repo.Glob(pattern)
	r.note(opGlob, pattern, digestList(names, err))
	return names, err
}

// Walk notes every path visited.
func (r *renderFS) Walk(p string, walkFn filepath.WalkFunc) error {
	if inScratch(p) {
		return r.scratch.Walk(p, walkFn)
	}
	var seen []string
	err := r.repo.Walk(p, func(p string, info os.FileInfo, err error) error {
		seen = append(seen, p)
		return walkFn(p, info, err)
	})
	r.note(opWalk, p, digestList(seen, err))
	return err
}
