package planner

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"slices"
	"strconv"

	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// A render's inputs are its parameters (namespace, image, tag, values…) and every file and
// directory kustomize looked at. renderFS notes each look and what it saw; the next snapshot
// replays the looks, and when all see the same thing the cached release is reused without
// running kustomize again. Looks under the render's own scratch directory are not inputs and
// are not noted.

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

// observe repeats one look. It digests results exactly as renderFS does.
func observe(fsys filesys.FileSystem, kind opKind, arg string) string {
	switch kind {
	case opRead:
		return digestBytes(fsys.ReadFile(arg))
	case opDir:
		return strconv.FormatBool(fsys.IsDir(arg))
	case opHas:
		return strconv.FormatBool(fsys.Exists(arg))
	case opList:
		return digestNames(fsys.ReadDir(arg))
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

// digestNames digests a directory's entries in sorted order: the in-memory filesystem lists
// them in map order, which differs from one listing to the next.
func digestNames(names []string, err error) string {
	return digestList(slices.Sorted(slices.Values(names)), err)
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
