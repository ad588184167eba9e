package writeback

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-git/go-git/v5"
	gitconfig "github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"

	"ebb.dev/ebb/gitsource"
	"ebb.dev/ebb/planner"
	"ebb.dev/ebb/reconciler"
)

// request is one rollback to write back.
type request struct {
	execution, rollback *reconciler.Execution
	mode                string
	// paths are the pipeline's files and directories, relative to the repository's root.
	paths []string
}

// result is what a write-back did.
type result struct {
	result, commit, branch, message string
}

// localBranch is where the commit is made in the scratch clone.
const localBranch = plumbing.ReferenceName("refs/heads/ebb-writeback")

// pipelinePaths returns the files of a pipeline as the failed and the restored commits define
// it: its pipeline file and each stage's manifests directory (or Helm chart and values files),
// under root. A kustomize base outside those directories is shared with other pipelines, and
// is not restored.
func pipelinePaths(root string, defs ...*planner.Pipeline) []string {
	seen := map[string]bool{}
	var out []string
	add := func(p string) {
		if p = path.Clean(path.Join(root, p)); p != "." && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, p := range defs {
		if p.File != "" {
			add(p.File)
		}
		for i := range p.Spec.Stages {
			if m := p.ManifestsOf(&p.Spec.Stages[i]); m != "" {
				add(m)
			}
			if h := p.HelmOf(&p.Spec.Stages[i]); h != nil {
				add(h.Chart)
				for _, f := range h.ValuesFiles {
					add(f)
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// rollbackBranch names the branch a write-back is pushed to for review.
func rollbackBranch(x *reconciler.Execution) string {
	return "ebb/rollback/" + x.Spec.Pipeline + "-" + strconv.Itoa(x.Spec.Number)
}

// checkRemote refuses a local work tree: pushing to the branch checked out there would leave
// its files behind its branch. A bare repository, or any remote, is fine.
func checkRemote(rawURL string) error {
	dir, local := gitsource.LocalPath(rawURL)
	if !local {
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, ".git")); err == nil {
		return &permanentError{fmt.Errorf("the repository %s is a work tree: write-back pushes to a bare repository or a remote", dir)}
	}
	return nil
}

// write makes the write-back commit in a scratch clone and pushes it.
func (w *Writer) write(ctx context.Context, req request) (*result, error) {
	if err := checkRemote(w.opts.Remote.URL); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "ebb-writeback-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	branch := plumbing.NewBranchReferenceName(w.opts.Branch)
	repo, err := git.PlainCloneContext(ctx, dir, false, &git.CloneOptions{
		URL: w.opts.Remote.URL, Auth: w.opts.Remote.Auth, ReferenceName: branch, SingleBranch: true, NoCheckout: true,
	})
	if err != nil {
		return nil, w.gitError("clone", err)
	}
	headRef, err := repo.Reference(branch, true)
	if err != nil {
		return nil, fmt.Errorf("branch %s: %w", w.opts.Branch, err)
	}
	head, err := repo.CommitObject(headRef.Hash())
	if err != nil {
		return nil, err
	}
	x, rb := req.execution, req.rollback
	failed, err := repo.CommitObject(plumbing.NewHash(x.Spec.Commit))
	if err != nil {
		return nil, &permanentError{fmt.Errorf("the failed commit %s is not in the history of branch %s (rewritten?)", short(x.Spec.Commit), w.opts.Branch)}
	}
	good, err := repo.CommitObject(plumbing.NewHash(rb.Spec.Commit))
	if err != nil {
		return nil, &permanentError{fmt.Errorf("the restored commit %s is not in the history of branch %s (rewritten?)", short(rb.Spec.Commit), w.opts.Branch)}
	}
	if done, err := w.alreadyWritten(ctx, repo, head, x); err != nil || done != nil {
		return done, err
	}

	trees := map[string]*object.Tree{}
	for name, c := range map[string]*object.Commit{"head": head, "failed": failed, "good": good} {
		if trees[name], err = c.Tree(); err != nil {
			return nil, err
		}
	}
	files := filesUnder(req.paths, trees["head"], trees["failed"], trees["good"])
	clean, restored := true, true
	for _, f := range files {
		h := blob(trees["head"], f)
		clean = clean && h == blob(trees["failed"], f)
		restored = restored && h == blob(trees["good"], f)
	}
	if restored {
		return &result{result: "nothing", branch: w.opts.Branch, message: fmt.Sprintf(
			"nothing written back to Git: branch %s already has the files of pipeline %s as at commit %s",
			w.opts.Branch, x.Spec.Pipeline, short(good.Hash.String()))}, nil
	}
	base, target := head, w.opts.Branch
	if req.mode == planner.WriteBackBranch || !clean {
		target = rollbackBranch(x)
		if !clean {
			base = failed // where the change applies: the files are as the failed commit left them
		}
	}
	sha, err := w.commit(repo, base, trees["good"], files, message(x, rb, req.paths))
	if err != nil {
		return nil, err
	}
	err = repo.PushContext(ctx, &git.PushOptions{
		RemoteName: "origin", Auth: w.opts.Remote.Auth,
		RefSpecs: []gitconfig.RefSpec{gitconfig.RefSpec(string(localBranch) + ":" + string(plumbing.NewBranchReferenceName(target)))},
	})
	if err != nil {
		return nil, w.gitError("push to branch "+target, err)
	}
	res := &result{commit: sha, branch: target}
	switch {
	case req.mode == planner.WriteBackBranch:
		res.result = "branch"
		res.message = fmt.Sprintf("written back to Git as branch %s (commit %s), for review: it restores the files of pipeline %s to commit %s",
			target, short(sha), x.Spec.Pipeline, short(good.Hash.String()))
	case !clean:
		res.result = "branch"
		res.message = fmt.Sprintf("not written back to branch %s: it changed the files of pipeline %s since commit %s; pushed branch %s (commit %s) instead, which restores them to commit %s",
			w.opts.Branch, x.Spec.Pipeline, short(x.Spec.Commit), target, short(sha), short(good.Hash.String()))
	default:
		res.result = "written"
		res.message = fmt.Sprintf("written back to Git: commit %s on branch %s restores the files of pipeline %s to commit %s",
			short(sha), target, x.Spec.Pipeline, short(good.Hash.String()))
		if head.Hash != failed.Hash {
			res.message += fmt.Sprintf(" (on the new head %s: the branch moved since commit %s)", short(head.Hash.String()), short(x.Spec.Commit))
		}
	}
	return res, nil
}

// alreadyWritten finds a write-back of x pushed before (the daemon stopped before recording
// it): on the followed branch, a commit with x's Ebb-Execution trailer since the failed
// commit; or the review branch.
func (w *Writer) alreadyWritten(ctx context.Context, repo *git.Repository, head *object.Commit, x *reconciler.Execution) (*result, error) {
	trailer := reconciler.TrailerExecution + ": " + x.Spec.DisplayName
	iter, err := repo.Log(&git.LogOptions{From: head.Hash})
	if err != nil {
		return nil, err
	}
	var found *object.Commit
	for i := 0; i < 200; i++ {
		c, err := iter.Next()
		if err != nil || c.Hash.String() == x.Spec.Commit {
			break
		}
		if strings.Contains(c.Message, "\n"+trailer+"\n") || strings.HasSuffix(c.Message, "\n"+trailer) {
			found = c
			break
		}
	}
	iter.Close()
	if found != nil {
		return &result{result: "written", commit: found.Hash.String(), branch: w.opts.Branch,
			message: fmt.Sprintf("written back to Git: commit %s on branch %s", short(found.Hash.String()), w.opts.Branch)}, nil
	}
	remote, err := repo.Remote("origin")
	if err != nil {
		return nil, err
	}
	refs, err := remote.ListContext(ctx, &git.ListOptions{Auth: w.opts.Remote.Auth})
	if err != nil {
		return nil, w.gitError("list branches", err)
	}
	want := plumbing.NewBranchReferenceName(rollbackBranch(x))
	for _, r := range refs {
		if r.Name() == want {
			return &result{result: "branch", commit: r.Hash().String(), branch: rollbackBranch(x),
				message: fmt.Sprintf("written back to Git as branch %s (commit %s)", rollbackBranch(x), short(r.Hash().String()))}, nil
		}
	}
	return nil, nil
}

// commit makes, on base, the commit that gives files their content in good (removing those
// good lacks), as the branch localBranch, and returns its SHA.
func (w *Writer) commit(repo *git.Repository, base *object.Commit, good *object.Tree, files []string, msg string) (string, error) {
	wt, err := repo.Worktree()
	if err != nil {
		return "", err
	}
	if err := wt.Checkout(&git.CheckoutOptions{Hash: base.Hash, Branch: localBranch, Create: true, Force: true}); err != nil {
		return "", fmt.Errorf("check out %s: %w", short(base.Hash.String()), err)
	}
	root := wt.Filesystem.Root()
	for _, f := range files {
		dst := filepath.Join(root, filepath.FromSlash(f))
		file, err := good.File(f)
		if errors.Is(err, object.ErrFileNotFound) {
			if _, serr := os.Lstat(dst); serr == nil {
				if _, err := wt.Remove(f); err != nil {
					return "", fmt.Errorf("remove %s: %w", f, err)
				}
			}
			continue
		}
		if err != nil {
			return "", err
		}
		r, err := file.Reader()
		if err != nil {
			return "", err
		}
		data, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			return "", err
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", err
		}
		mode := os.FileMode(0o644)
		if file.Mode == filemode.Executable {
			mode = 0o755
		}
		if err := os.WriteFile(dst, data, mode); err != nil {
			return "", err
		}
		if _, err := wt.Add(f); err != nil {
			return "", fmt.Errorf("add %s: %w", f, err)
		}
	}
	a := w.opts.Author
	sha, err := wt.Commit(msg, &git.CommitOptions{Author: &object.Signature{Name: a.Name, Email: a.Email, When: time.Now()}})
	if err != nil {
		return "", fmt.Errorf("commit: %w", err)
	}
	return sha.String(), nil
}

// filesUnder lists the files of the trees at or under each of paths.
func filesUnder(paths []string, trees ...*object.Tree) []string {
	seen := map[string]bool{}
	var out []string
	for _, t := range trees {
		_ = t.Files().ForEach(func(f *object.File) error {
			for _, p := range paths {
				if (f.Name == p || strings.HasPrefix(f.Name, p+"/")) && !seen[f.Name] {
					seen[f.Name] = true
					out = append(out, f.Name)
				}
			}
			return nil
		})
	}
	sort.Strings(out)
	return out
}

// blob returns the hash of file p in t, or the zero hash when t lacks it.
func blob(t *object.Tree, p string) plumbing.Hash {
	e, err := t.FindEntry(p)
	if err != nil {
		return plumbing.ZeroHash
	}
	return e.Hash
}

// gitError says what failed, without credentials; one that trying again cannot mend
// (authentication, authorisation, a refused push) is permanent. A push the branch moved
// under (non-fast-forward) is tried again, on the new head.
func (w *Writer) gitError(op string, err error) error {
	msg := w.opts.Remote.Redact(err.Error())
	e := fmt.Errorf("%s of %s: %s", op, w.opts.Remote.Redact(w.opts.Remote.URL), msg)
	switch {
	case errors.Is(err, transport.ErrAuthenticationRequired), errors.Is(err, transport.ErrAuthorizationFailed):
		return &permanentError{fmt.Errorf("%w: the daemon's Git credentials may not push there (read-only?)", e)}
	case errors.Is(err, git.ErrNonFastForwardUpdate), strings.Contains(msg, "non-fast-forward"), strings.Contains(msg, "fetch first"):
		return e
	case strings.Contains(msg, "declined"), strings.Contains(msg, "protected"), strings.Contains(msg, "rejected"), strings.Contains(msg, "denied"):
		return &permanentError{fmt.Errorf("%w: the branch refused the push (protected?)", e)}
	}
	return e
}

// message is the write-back commit's message: what failed, what was restored, which files,
// and the trailers the reconciler recognises.
func message(x, rb *reconciler.Execution, paths []string) string {
	reason := x.Status.Comment
	if i := strings.Index(reason, "; rolling back to"); i >= 0 {
		reason = reason[:i]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "ebb: roll back pipeline %s to commit %s\n\n", x.Spec.Pipeline, short(rb.Spec.Commit))
	fmt.Fprintf(&b, "Execution %s failed at stage %s: %s.\n", x.Spec.DisplayName, x.Status.Stage, reason)
	fmt.Fprintf(&b, "%s restored the release of commit %s", rb.Spec.DisplayName, short(rb.Spec.Commit))
	if rb.Status.Image != "" {
		fmt.Fprintf(&b, " (image %s)", rb.Status.Image)
	}
	fmt.Fprintf(&b, ".\n\nThis commit restores the files of pipeline %s, and only those, to that commit:\n", x.Spec.Pipeline)
	for _, p := range paths {
		fmt.Fprintf(&b, "  %s\n", p)
	}
	fmt.Fprintf(&b, "\nFailed commit:   %s\nRestored commit: %s\n\n", x.Spec.Commit, rb.Spec.Commit)
	fmt.Fprintf(&b, "%s: %s\n%s: %s\n", reconciler.TrailerExecution, x.Spec.DisplayName, reconciler.TrailerRestores, rb.Spec.Commit)
	return b.String()
}
