package daemon

import (
	"fmt"
	"strings"

	"ebb.dev/ebb/reconciler"
)

// Ready reasons of a Pipeline, besides reasonInvalid and reasonRenderFailed and those of
// its newest execution's phase (Running, RollbackCompleted, ...).
const (
	reasonRemoved            = "RemovedFromGit"
	reasonNotEnabled         = "NotEnabled"
	reasonSucceeded          = "Succeeded"
	reasonProgressing        = "Progressing"
	reasonWaitingForCluster  = "WaitingForCluster"
	reasonReleaseQuarantined = "ReleaseQuarantined"
)

// pipelineFacts is everything a Pipeline's conditions are decided from.
type pipelineFacts struct {
	name    string
	file    string
	enabled bool
	// commit is the last planned commit.
	commit string
	// git is the pipeline at commit; nil when it is no longer in Git.
	git *gitPipeline
	// removed is the commit at which it disappeared from Git.
	removed *reconciler.CommitRef
	// stages carry their ledgers' releases.
	stages []reconciler.PipelineStage
	// newest is the pipeline's newest Deploy execution, if any.
	newest *reconciler.Execution
}

// conditions decides a Pipeline's conditions, first match wins: removed from Git; a file
// that does not parse, validate or render (Stalled); not enabled; an execution in progress
// (Reconciling); every stage running the release planned at the commit (Ready); the newest
// execution of the planned release ended otherwise (Stalled when the release or pipeline is
// wrong, Reconciling while the commit waits to be tried again on its cluster); a planned
// release quarantined; and otherwise a deploy about to start (Reconciling).
func (f pipelineFacts) conditions() reconciler.Conditions {
	switch {
	case f.git == nil:
		return notReady(reasonRemoved, f.removedMessage())
	case len(f.git.errs) > 0:
		msg := f.errorMessage()
		return reconciler.Conditions{Ready: *reconciler.NewCondition(false, f.git.reason, msg), Stalled: reconciler.NewCondition(true, f.git.reason, msg)}
	case !f.enabled:
		return notReady(reasonNotEnabled, fmt.Sprintf("planned only: spec.enabled is not true in %s, so commit %s is planned but not applied", f.file, short(f.commit)))
	}
	x := f.newest
	if x != nil && !x.Status.Phase.Terminal() {
		reason := phaseReason(x)
		msg := executionMessage(x)
		return reconciler.Conditions{Ready: *reconciler.NewCondition(false, reason, msg), Reconciling: reconciler.NewCondition(true, reason, msg)}
	}
	if f.inSync() {
		return reconciler.Conditions{Ready: *reconciler.NewCondition(true, reasonSucceeded, fmt.Sprintf("in sync at commit %s: stages %s run the release planned at it", short(f.commit), stageNames(f.stages)))}
	}
	if x != nil && x.Status.Phase != reconciler.Completed && f.concerns(x) {
		msg := executionMessage(x)
		switch {
		case x.Status.Failure == reconciler.FailureStalled:
			return reconciler.Conditions{Ready: *reconciler.NewCondition(false, phaseReason(x), msg), Stalled: reconciler.NewCondition(true, phaseReason(x), msg)}
		default:
			return notReady(phaseReason(x), msg)
		}
	}
	if msg := f.quarantined(); msg != "" {
		return notReady(reasonReleaseQuarantined, msg)
	}
	msg := fmt.Sprintf("commit %s is to be deployed to stages %s", short(f.commit), stageNames(f.stages))
	return reconciler.Conditions{Ready: *reconciler.NewCondition(false, reasonProgressing, msg), Reconciling: reconciler.NewCondition(true, reasonProgressing, msg)}
}

// inSync reports whether every stage runs the release planned for it.
func (f pipelineFacts) inSync() bool {
	planned := f.git.planned
	if len(planned) == 0 || len(planned) != len(f.stages) {
		return false
	}
	for _, st := range f.stages {
		if st.Current == nil || st.Current.Hash != planned[st.Name] {
			return false
		}
	}
	return true
}

// concerns reports whether execution x is about the release planned now: it ran the planned
// commit, or the releases it ran are the ones planned.
func (f pipelineFacts) concerns(x *reconciler.Execution) bool {
	if x.Spec.Commit == f.commit {
		return true
	}
	n := 0
	for _, rec := range x.Status.Stages {
		if rec.ReleaseHash == "" {
			continue
		}
		if f.git.planned[rec.Name] != rec.ReleaseHash {
			return false
		}
		n++
	}
	return n > 0
}

// quarantined describes the first stage whose planned release failed before and is not
// tried again, or returns "".
func (f pipelineFacts) quarantined() string {
	for _, st := range f.stages {
		hash := f.git.planned[st.Name]
		for _, r := range st.Quarantined {
			if r.Hash != hash {
				continue
			}
			runs := "no release"
			if st.Current != nil {
				runs = "commit " + shortOf(st.Current)
			}
			return fmt.Sprintf("stage %s: the release planned at commit %s failed in %s (%s) and is quarantined until a commit changes it; the stage runs %s",
				st.Name, short(f.commit), r.Execution, r.Reason, runs)
		}
	}
	return ""
}

// removedMessage says what happened to a pipeline removed from Git, what was left, and how
// to remove it.
func (f pipelineFacts) removedMessage() string {
	at := ""
	if f.removed != nil {
		at = " at commit " + f.removed.ShortSHA
	}
	label := reconciler.LabelPipeline + "=" + f.name
	var b strings.Builder
	fmt.Fprintf(&b, "pipeline %s was removed from Git%s (%s is gone). ", f.name, at, f.file)
	var where []string
	for _, st := range f.stages {
		if st.Namespace != "" {
			where = append(where, fmt.Sprintf("%s (cluster %s, namespace %s)", st.Name, st.Cluster, st.Namespace))
		} else {
			where = append(where, st.Name)
		}
	}
	if len(where) > 0 {
		fmt.Fprintf(&b, "Its objects in stages %s were left in the cluster, not pruned, and its ledgers kept. ", strings.Join(where, ", "))
	} else {
		b.WriteString("Its objects, if any, were left in the cluster, not pruned. ")
	}
	fmt.Fprintf(&b, "To remove them, restore the file, or delete them with kubectl using the label %s", label)
	if len(f.stages) > 0 && f.stages[0].Namespace != "" {
		fmt.Fprintf(&b, ", e.g. kubectl -n %s delete deployments,services,configmaps,secrets -l %s", f.stages[0].Namespace, label)
	}
	return b.String()
}

// errorMessage is the located errors of a pipeline that could not be planned, on one line.
func (f pipelineFacts) errorMessage() string {
	msgs := make([]string, len(f.git.errs))
	for i, e := range f.git.errs {
		msgs[i] = e.Error()
	}
	msg := strings.Join(msgs, "; ")
	if f.git.derived {
		msg += " (this Pipeline is named after the file: its metadata.name could not be read)"
	}
	for _, st := range f.stages {
		if st.Current != nil {
			msg += fmt.Sprintf("; not planned at commit %s: the stages keep running their current releases", short(f.commit))
			break
		}
	}
	return msg
}

// executionMessage names an execution, its status and comment. It leaves out the stage and
// task, which change with every task: the Pipeline is written when the execution's status
// changes, not at each of its steps (ebb execution NAME#N shows them).
func executionMessage(x *reconciler.Execution) string {
	msg := x.Spec.DisplayName + " " + string(x.Status.Phase)
	if x.Status.Comment != "" {
		msg += ": " + x.Status.Comment
	}
	return msg
}

// phaseReason is the condition reason of an execution's phase: the phase in CamelCase
// (RUNNING -> Running), or WaitingForCluster while it waits for its cluster.
func phaseReason(x *reconciler.Execution) string {
	if x.Status.Phase == reconciler.Waiting && x.Status.Failure == reconciler.FailureWaiting {
		return reasonWaitingForCluster
	}
	return reconciler.PhaseReason(x.Status.Phase)
}

func notReady(reason, message string) reconciler.Conditions {
	return reconciler.Conditions{Ready: *reconciler.NewCondition(false, reason, message)}
}

func shortOf(r *reconciler.ReleaseRecord) string {
	if r.ShortCommit != "" {
		return r.ShortCommit
	}
	return short(r.Commit)
}

func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}
