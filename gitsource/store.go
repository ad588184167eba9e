package gitsource

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/go-git/go-billy/v5/osfs"
	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// store is the on-disk bare clone of one remote. go-git's filesystem storage is not safe for
// concurrent use, so mu serialises every read of it, by polls and by snapshots alike. Fetches
// write through a storage of their own and need mu only to make the reader see the new pack,
// so a slow fetch never blocks the planner reading a snapshot.
type store struct {
	dir        string
	url        string
	cacheBytes int64
	depth      int

	mu      sync.Mutex
	storage *filesystem.Storage
}

// openLocked opens the clone, creating it when missing and creating it afresh when it cannot
// be opened (a corrupt cache). It reports whether it had to start from an empty clone.
func (st *store) openLocked() (fresh bool, err error) {
	if st.storage != nil {
		return false, nil
	}
	if _, err := os.Stat(st.dir); err == nil {
		storage := st.newStorage(st.cacheBytes)
		if _, err := git.Open(storage, nil); err == nil {
			if err := verifyStorage(storage); err == nil {
				st.storage = storage
				return false, nil
			}
		}
		_ = storage.Close()
	}
	return true, st.resetLocked()
}

// verifyStorage is a cheap check that the clone is readable: its pack indexes load.
func verifyStorage(s *filesystem.Storage) error {
	_, err := s.EncodedObjectSize(plumbing.ZeroHash)
	if errors.Is(err, plumbing.ErrObjectNotFound) {
		return nil
	}
	return err
}

// resetLocked deletes the clone and starts an empty one.
func (st *store) resetLocked() error {
	if st.storage != nil {
		_ = st.storage.Close()
		st.storage = nil
	}
	if err := os.RemoveAll(st.dir); err != nil {
		return fmt.Errorf("remove cache %s: %w", st.dir, err)
	}
	if err := os.MkdirAll(st.dir, 0o700); err != nil {
		return fmt.Errorf("create cache %s: %w", st.dir, err)
	}
	storage := st.newStorage(st.cacheBytes)
	if _, err := git.Init(storage, nil); err != nil {
		_ = storage.Close()
		return fmt.Errorf("init cache %s: %w", st.dir, err)
	}
	st.storage = storage
	return nil
}

func (st *store) newStorage(cacheBytes int64) *filesystem.Storage {
	return filesystem.NewStorageWithOptions(osfs.New(st.dir), cache.NewObjectLRU(cache.FileSize(cacheBytes)),
		filesystem.Options{KeepDescriptors: true})
}

// close releases the open pack files.
func (st *store) close() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.storage == nil {
		return nil
	}
	err := st.storage.Close()
	st.storage = nil
	return err
}

// fetch fetches refspecs from the remote into the clone, forcing ref updates so a force-push
// is followed. It writes through a separate storage and then has the reader re-index.
func (st *store) fetch(ctx context.Context, auth transport.AuthMethod, refspecs ...config.RefSpec) error {
	writer := st.newStorage(1 << 20)
	defer func() { _ = writer.Close() }()
	remote := git.NewRemote(writer, &config.RemoteConfig{Name: "origin", URLs: []string{st.url}})
	err := remote.FetchContext(ctx, &git.FetchOptions{
		RemoteName: "origin",
		RefSpecs:   refspecs,
		Auth:       auth,
		Tags:       git.NoTags,
		Force:      true,
		Depth:      st.depth,
	})
	if errors.Is(err, git.NoErrAlreadyUpToDate) {
		err = nil
	}
	st.mu.Lock()
	if st.storage != nil {
		st.storage.ObjectStorage.Reindex()
	}
	st.mu.Unlock()
	return err
}

// hasCommitLocked reports whether the clone holds commit h.
func (st *store) hasCommitLocked(h plumbing.Hash) bool {
	_, err := object.GetCommit(st.storage, h)
	return err == nil
}

// refLocked returns what ref name points to in the clone, peeled to a commit.
func (st *store) refLocked(name plumbing.ReferenceName) (plumbing.Hash, error) {
	ref, err := st.storage.Reference(name)
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("read %s: %w", name, err)
	}
	return st.peelLocked(ref.Hash())
}

// peelLocked follows annotated tags to the commit they name.
func (st *store) peelLocked(h plumbing.Hash) (plumbing.Hash, error) {
	for range 10 {
		obj, err := st.storage.EncodedObject(plumbing.AnyObject, h)
		if err != nil {
			return plumbing.ZeroHash, fmt.Errorf("read object %s: %w", h, err)
		}
		if obj.Type() != plumbing.TagObject {
			return h, nil
		}
		tag, err := object.DecodeTag(st.storage, obj)
		if err != nil {
			return plumbing.ZeroHash, fmt.Errorf("read tag %s: %w", h, err)
		}
		h = tag.Target
	}
	return plumbing.ZeroHash, fmt.Errorf("tag chain at %s too long", h)
}

// setRefLocked points ref name at h.
func (st *store) setRefLocked(name plumbing.ReferenceName, h plumbing.Hash) error {
	return st.storage.SetReference(plumbing.NewHashReference(name, h))
}
