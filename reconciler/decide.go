package reconciler

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/planner"
)

// Commit is the Git commit a target was rendered from.
type Commit struct {
	SHA     string
	Message string
}

// revertLine is the line `git revert` writes into a revert commit's message.
var revertLine = regexp.MustCompile(`(?m)^This reverts commit ([0-9a-f]{7,40})\.?\s*$`)

// Reverts returns the commit that c reverts according to its message, or "".
func (c Commit) Reverts() string {
	if m := revertLine.FindStringSubmatch(c.Message); m != nil {
		return m[1]
	}
	return ""
}

// Trailers of ebb's own write-back commit (internal/writeback): the execution whose rollback
// it records, and the commit whose files it restores.
const (
	TrailerExecution = "Ebb-Execution"
	TrailerRestores  = "Ebb-Restores"
)

// WriteBack returns, for ebb's write-back commit, the execution it records and the commit it
// restores (its trailers); "" for any other commit.
func (c Commit) WriteBack() (execution, restores string) {
	for _, line := range strings.Split(c.Message, "\n") {
		k, v, ok := strings.Cut(line, ":")
		switch {
		case !ok:
		case k == TrailerExecution:
			execution = strings.TrimSpace(v)
		case k == TrailerRestores:
			restores = strings.TrimSpace(v)
		}
	}
	if execution == "" {
		return "", ""
	}
	return execution, restores
}

// Desired is one stage's release at one commit, rendered by the planner.
type Desired struct {
	Stage *planner.Stage
	Hash  string
	// Namespace is the stage's namespace; created when the release has no Namespace object.
	Namespace string
	// Deployment and Service are the rendered names of the service's Deployment and Service
	// (a namePrefix may have changed them): the objects a deployment model acts on.
	Deployment, Service string
	Images              []string
	Objects             planner.Objects
}

// Target is what a pipeline should run according to one commit: each stage's release, in
// the pipeline's stage order.
type Target struct {
	Pipeline *planner.Pipeline
	Commit   Commit
	Stages   []Desired
	// Generation orders the targets of one pipeline as the source saw their commits: a
	// pipeline offered a target of generation n ignores later offers of a lower one (a resync
	// of the previous commit's targets that raced with the new commit's). Zero is unordered.
	Generation int64
}

// Name is the pipeline's name.
func (t *Target) Name() string { return t.Pipeline.Metadata.Name }

// decision is what a target means for a pipeline, given its stages' ledgers.
type decision struct {
	// deploy is true when an execution should run for the target's commit.
	deploy bool
	// reason says why nothing runs, or why the execution runs.
	reason string
	// redeployOf, when set, is the verified release the target redeploys (a revert).
	redeployOf *ReleaseRecord
	// writtenBack names the stages whose restored release the target's commit, ebb's own
	// write-back, now asks for: they are in sync, and recordWriteBack records the commit.
	writtenBack []string
}

// decide compares each stage's desired release with its ledger, in stage order:
//   - a stage whose current release is the desired one is in sync, unless a rollback put it
//     there and this commit now asks for it: Git caught up (a revert), which is recorded as a
//     redeploy; but when the commit is ebb's own write-back of that rollback, the stage is in
//     sync (no rollout, no loop), and the ledger records the commit (recordWriteBack);
//   - a desired release that failed before is quarantined: nothing runs, and later stages
//     wait, until a commit changes that stage's release;
//   - any other difference starts an execution.
func decide(t *Target, ledgers map[string]*StageLedgerStatus) decision {
	var writtenBack []string
	for _, d := range t.Stages {
		l := ledgers[d.Stage.Name]
		if l == nil {
			l = &StageLedgerStatus{}
		}
		if cur := l.Current; cur != nil && cur.Hash == d.Hash {
			if cur.RestoredBy == "" || cur.Commit == t.Commit.SHA {
				continue
			}
			if _, restores := t.Commit.WriteBack(); restores != "" && restores == cur.Commit {
				writtenBack = append(writtenBack, d.Stage.Name)
				continue
			}
			good := l.verified(d.Hash)
			return decision{deploy: true, redeployOf: good, writtenBack: writtenBack,
				reason: fmt.Sprintf("stage %s: commit %s asks for the release that %s restored", d.Stage.Name, short(t.Commit.SHA), cur.RestoredBy)}
		}
		if s := l.Stalled; s != nil && s.Hash == d.Hash && s.Stage == stageFingerprint(d.Stage) {
			return decision{writtenBack: writtenBack, reason: fmt.Sprintf("stage %s: release %s of commit %s stalled in %s (%s); a commit that changes the release or the stage tries again",
				d.Stage.Name, releaseID(d.Hash), short(s.Commit), s.Execution, s.Reason)}
		}
		if f := l.failed(d.Hash); f != nil {
			return decision{writtenBack: writtenBack, reason: fmt.Sprintf("stage %s: release %s of commit %s is quarantined: it failed in %s (%s)",
				d.Stage.Name, releaseID(d.Hash), short(f.Commit), f.Execution, f.Reason)}
		}
		return decision{deploy: true, redeployOf: l.verified(d.Hash), writtenBack: writtenBack,
			reason: fmt.Sprintf("stage %s: release changed", d.Stage.Name)}
	}
	if len(writtenBack) > 0 {
		execution, _ := t.Commit.WriteBack()
		return decision{writtenBack: writtenBack, reason: fmt.Sprintf("commit %s is ebb's write-back of %s: stages %s run the release it restores",
			short(t.Commit.SHA), execution, strings.Join(writtenBack, ", "))}
	}
	return decision{reason: "every stage runs its desired release"}
}

// recordWriteBack records, in the ledger of each stage d.writtenBack names, that the target's
// commit (ebb's write-back) asks for the release the stage runs: the current release is then
// the commit's, no longer a restore, so later commits that keep it are in sync too, and the
// execution that restored it stays named. Call it before acting on d.
func (r *Reconciler) recordWriteBack(ctx context.Context, t *Target, d decision) error {
	for _, stage := range d.writtenBack {
		if err := r.updateLedger(ctx, t.Name(), stage, func(s *StageLedgerStatus) bool {
			cur := s.Current
			if cur == nil || cur.RestoredBy == "" {
				return false
			}
			now := metav1.Now()
			s.Current = &ReleaseRecord{
				Commit: t.Commit.SHA, ShortCommit: short(t.Commit.SHA), Hash: cur.Hash, Images: cur.Images,
				Execution: cur.RestoredBy, At: &now,
				Reason: fmt.Sprintf("written back to Git by commit %s, restoring commit %s", short(t.Commit.SHA), short(cur.Commit)),
			}
			return true
		}); err != nil {
			return err
		}
		r.log.Info("write-back commit recorded", "pipeline", t.Name(), "stage", stage, "commit", short(t.Commit.SHA))
	}
	return nil
}

// redeployComment names the execution that verified a release a revert brings back.
func redeployComment(t *Target, good *ReleaseRecord) string {
	c := fmt.Sprintf("redeploy of the release verified by %s (commit %s)", good.Execution, short(good.Commit))
	if r := t.Commit.Reverts(); r != "" {
		c += fmt.Sprintf("; commit %s reverts %s", short(t.Commit.SHA), short(r))
	}
	return c
}
