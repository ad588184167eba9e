package reconciler

import (
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Condition types of every ebb object (Execution, StageLedger, Pipeline), as kstatus reads
// them: Ready is always present; Reconciling and Stalled are "abnormal-true" conditions,
// present only while true.
const (
	ConditionReady       = "Ready"
	ConditionReconciling = "Reconciling"
	ConditionStalled     = "Stalled"
)

// maxConditionMessage bounds a condition's message well below the API's 32768 characters: a
// broken file can have many errors, and the record keeps them all elsewhere.
const maxConditionMessage = 4096

// Conditions is what an object's three conditions say. Reconciling and Stalled are nil when
// false, and then removed from the object.
type Conditions struct {
	Ready       metav1.Condition
	Reconciling *metav1.Condition
	Stalled     *metav1.Condition
}

// Apply writes c into conds for an object at generation, and reports whether anything
// changed. A condition whose status did not change keeps its lastTransitionTime, so applying
// the same conditions twice changes nothing (and needs no write).
func (c Conditions) Apply(conds *[]metav1.Condition, generation int64) bool {
	// Whole seconds: the API server stores no more, and a time read back must compare equal.
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	set := func(typ string, cond *metav1.Condition) bool {
		if cond == nil {
			return meta.RemoveStatusCondition(conds, typ)
		}
		cond.Type, cond.ObservedGeneration, cond.LastTransitionTime = typ, generation, now
		if len(cond.Message) > maxConditionMessage {
			cond.Message = cond.Message[:maxConditionMessage-3] + "..."
		}
		return meta.SetStatusCondition(conds, *cond)
	}
	ready := c.Ready
	changed := set(ConditionReady, &ready)
	changed = set(ConditionReconciling, c.Reconciling) || changed
	changed = set(ConditionStalled, c.Stalled) || changed
	return changed
}

// NewCondition returns a condition of status True when ok, else False, for Conditions.
func NewCondition(ok bool, reason, message string) *metav1.Condition {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	return &metav1.Condition{Status: status, Reason: reason, Message: message}
}

// executionConditions derives an execution's conditions from its phase and failure class:
// Reconciling while it is QUEUED, RUNNING, WAITING or ROLLING_BACK; Ready once COMPLETED (a
// rollback execution too); otherwise Ready=False with the phase as reason, and Stalled when
// the release or pipeline is wrong (FailureStalled). It is the one place they are decided;
// the store calls it before every status write.
func executionConditions(x *Execution) Conditions {
	st := &x.Status
	reason := PhaseReason(st.Phase)
	message := st.Comment
	if message == "" {
		message = fmt.Sprintf("%s is %s", x.Spec.DisplayName, orPending(st.Phase))
	}
	var c Conditions
	switch {
	case st.Phase == Completed:
		c.Ready = *NewCondition(true, reason, message)
	case !st.Phase.Terminal():
		if st.Phase == Waiting && st.Failure == FailureWaiting {
			reason = "WaitingForCluster"
		}
		c.Ready = *NewCondition(false, reason, message)
		c.Reconciling = NewCondition(true, reason, message)
	default:
		c.Ready = *NewCondition(false, reason, message)
		if st.Failure == FailureStalled {
			c.Stalled = NewCondition(true, reason, message)
		}
	}
	return c
}

// ledgerConditions derives a ledger's conditions: Ready while the stage runs a verified
// release (the last known-good one, or one a rollback restored); Stalled when its only
// releases failed, since a failed release is not tried again until a commit changes it.
func ledgerConditions(l *StageLedger) Conditions {
	st := &l.Status
	var c Conditions
	switch {
	case st.Current != nil && st.Current.RestoredBy != "":
		c.Ready = *NewCondition(true, "RestoredKnownGood", fmt.Sprintf("stage %s runs %s, restored by %s", l.Spec.Stage, describeRelease(st.Current), st.Current.RestoredBy))
	case st.Current != nil:
		c.Ready = *NewCondition(true, "Verified", fmt.Sprintf("stage %s runs %s, verified by %s", l.Spec.Stage, describeRelease(st.Current), st.Current.Execution))
	case len(st.Failed) > 0:
		msg := fmt.Sprintf("stage %s has no verified release: %s failed (%s) and is quarantined until a commit changes it", l.Spec.Stage, describeRelease(&st.Failed[0]), st.Failed[0].Reason)
		c.Ready = *NewCondition(false, "ReleaseFailed", msg)
		c.Stalled = NewCondition(true, "ReleaseFailed", msg)
	default:
		c.Ready = *NewCondition(false, "NoRelease", fmt.Sprintf("stage %s has no release yet", l.Spec.Stage))
	}
	return c
}

// describeRelease names a release for messages: its commit and images.
func describeRelease(r *ReleaseRecord) string {
	commit := r.ShortCommit
	if commit == "" {
		commit = short(r.Commit)
	}
	s := "commit " + commit
	if len(r.Images) > 0 {
		s += " (" + strings.Join(r.Images, ", ") + ")"
	}
	return s
}

// PhaseReason turns a phase into a condition reason: ROLLBACK_COMPLETED -> RollbackCompleted.
func PhaseReason(s Status) string {
	if s == "" {
		return "Pending"
	}
	var b strings.Builder
	for _, word := range strings.Split(strings.ToLower(string(s)), "_") {
		if word != "" {
			b.WriteString(strings.ToUpper(word[:1]) + word[1:])
		}
	}
	return b.String()
}

func orPending(s Status) string {
	if s == "" {
		return "pending"
	}
	return string(s)
}
