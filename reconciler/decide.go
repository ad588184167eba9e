package reconciler

import (
	"fmt"
	"regexp"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

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
	Objects             []*unstructured.Unstructured
}

// Target is what a pipeline should run according to one commit: each stage's release, in
// the pipeline's stage order.
type Target struct {
	Pipeline *planner.Pipeline
	Commit   Commit
	Stages   []Desired
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
}

// decide compares each stage's desired release with its ledger, in stage order:
//   - a stage whose current release is the desired one is in sync, unless a rollback put it
//     there and this commit now asks for it: Git caught up (a revert), which is recorded as a
//     redeploy;
//   - a desired release that failed before is quarantined: nothing runs, and later stages
//     wait, until a commit changes that stage's release;
//   - any other difference starts an execution.
func decide(t *Target, ledgers map[string]*StageLedgerStatus) decision {
	for _, d := range t.Stages {
		l := ledgers[d.Stage.Name]
		if l == nil {
			l = &StageLedgerStatus{}
		}
		if cur := l.Current; cur != nil && cur.Hash == d.Hash {
			if cur.RestoredBy == "" || cur.Commit == t.Commit.SHA {
				continue
			}
			good := l.verified(d.Hash)
			return decision{deploy: true, redeployOf: good,
				reason: fmt.Sprintf("stage %s: commit %s asks for the release that %s restored", d.Stage.Name, short(t.Commit.SHA), cur.RestoredBy)}
		}
		if s := l.Stalled; s != nil && s.Hash == d.Hash && s.Stage == stageFingerprint(d.Stage) {
			return decision{reason: fmt.Sprintf("stage %s: release %s of commit %s stalled in %s (%s); a commit that changes the release or the stage tries again",
				d.Stage.Name, releaseID(d.Hash), short(s.Commit), s.Execution, s.Reason)}
		}
		if f := l.failed(d.Hash); f != nil {
			return decision{reason: fmt.Sprintf("stage %s: release %s of commit %s is quarantined: it failed in %s (%s)",
				d.Stage.Name, releaseID(d.Hash), short(f.Commit), f.Execution, f.Reason)}
		}
		return decision{deploy: true, redeployOf: l.verified(d.Hash),
			reason: fmt.Sprintf("stage %s: release changed", d.Stage.Name)}
	}
	return decision{reason: "every stage runs its desired release"}
}

// redeployComment names the execution that verified a release a revert brings back.
func redeployComment(t *Target, good *ReleaseRecord) string {
	c := fmt.Sprintf("redeploy of the release verified by %s (commit %s)", good.Execution, short(good.Commit))
	if r := t.Commit.Reverts(); r != "" {
		c += fmt.Sprintf("; commit %s reverts %s", short(t.Commit.SHA), short(r))
	}
	return c
}
