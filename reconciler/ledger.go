package reconciler

// The ledger of a stage (StageLedger) is where ebb decides what a stage may run: which
// release is current, which is the last known-good one a rollback restores, which releases
// are quarantined and which stalled. The decisions are the StageLedgerStatus methods here;
// decide (decide.go) reads them to choose whether a commit starts an execution, and the
// execution records its outcome through them.

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/planner"
)

// ledger returns a copy of a stage's ledger, to change and save.
func (r *Reconciler) ledger(ctx context.Context, pipeline, stage string) (*StageLedger, error) {
	l, err := r.sharedLedger(ctx, pipeline, stage)
	if err != nil {
		return nil, err
	}
	return l.DeepCopy(), nil
}

// sharedLedger returns a stage's ledger, shared: the caller must not change it. The reconciler
// is the only writer of ledgers (the leader, one worker per pipeline), so it keeps the last one
// it read or wrote (replaced, never changed, on each save) and reads the API server only for
// stages it has not seen: a poll or a resync that changes nothing reads no ledger.
func (r *Reconciler) sharedLedger(ctx context.Context, pipeline, stage string) (*StageLedger, error) {
	key := LedgerName(pipeline, stage)
	r.mu.Lock()
	l, complete := r.ledgerCache[key], r.ledgersListed && !r.ledgerForgotten[key]
	r.mu.Unlock()
	if l != nil {
		return l, nil
	}
	if complete {
		// Resume read every ledger, and this daemon writes the new ones: a stage it has none
		// of has never run.
		l = r.store.NewLedger(pipeline, stage)
		r.cacheLedger(key, l)
		return l, nil
	}
	l, err := r.store.Ledger(ctx, pipeline, stage)
	if err != nil {
		return nil, err
	}
	r.cacheLedger(key, l)
	r.mu.Lock()
	delete(r.ledgerForgotten, key)
	r.mu.Unlock()
	return l, nil
}

// updateLedger lets change edit a stage's ledger and saves it when change reports that it
// changed something. A conflict (someone else wrote it) reads it again and retries.
func (r *Reconciler) updateLedger(ctx context.Context, pipeline, stage string, change func(*StageLedgerStatus) bool) error {
	key := LedgerName(pipeline, stage)
	for attempt := 0; ; attempt++ {
		l, err := r.ledger(ctx, pipeline, stage)
		if err != nil {
			return err
		}
		if !change(&l.Status) {
			return nil
		}
		err = r.store.SaveLedger(ctx, l)
		if err == nil {
			r.cacheLedger(key, l) // l is this write's own copy: kept, and never changed again
			return nil
		}
		r.forget(key)
		if !apierrors.IsConflict(err) || attempt == 3 {
			return err
		}
	}
}

// primeLedgers reads every ledger with one request, so that the first commit after a start
// does not read them one by one.
func (r *Reconciler) primeLedgers(ctx context.Context) error {
	all, err := r.store.ListLedgers(ctx, "")
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range all {
		if r.owns(all[i].Spec.Pipeline) {
			r.ledgerCache[all[i].Name] = all[i].DeepCopy()
		}
	}
	r.ledgersListed = true
	return nil
}

// cacheLedger keeps l, which nobody changes from then on, as the stage's newest ledger.
func (r *Reconciler) cacheLedger(key string, l *StageLedger) {
	r.mu.Lock()
	r.ledgerCache[key] = l
	r.mu.Unlock()
}

// forget drops a stage's ledger from the cache after a failed write: the next read asks the
// API server what it holds.
func (r *Reconciler) forget(key string) {
	r.mu.Lock()
	delete(r.ledgerCache, key)
	r.ledgerForgotten[key] = true
	r.mu.Unlock()
}

// verified returns the verified release with hash, if any.
func (s *StageLedgerStatus) verified(hash string) *ReleaseRecord {
	for i := range s.Verified {
		if s.Verified[i].Hash == hash {
			return &s.Verified[i]
		}
	}
	return nil
}

// failed returns the quarantined release with hash, if any.
func (s *StageLedgerStatus) failed(hash string) *ReleaseRecord {
	for i := range s.Failed {
		if s.Failed[i].Hash == hash {
			return &s.Failed[i]
		}
	}
	return nil
}

// recordVerified makes r the current and last known-good release, and remembers it.
func (s *StageLedgerStatus) recordVerified(r ReleaseRecord) {
	s.Current = &r
	good := r
	good.RestoredBy = ""
	s.LastKnownGood = &good
	s.Verified = prepend(s.Verified, good)
	// A release that passes now is no longer quarantined, and the stage no longer stalled.
	s.Failed = remove(s.Failed, r.Hash)
	s.Stalled = nil
}

// recordFailed quarantines r.
func (s *StageLedgerStatus) recordFailed(r ReleaseRecord) {
	s.Failed = prepend(s.Failed, r)
}

func prepend(list []ReleaseRecord, r ReleaseRecord) []ReleaseRecord {
	list = append([]ReleaseRecord{r}, remove(list, r.Hash)...)
	if len(list) > ledgerHistory {
		list = list[:ledgerHistory]
	}
	return list
}

func remove(list []ReleaseRecord, hash string) []ReleaseRecord {
	out := list[:0:0]
	for _, r := range list {
		if r.Hash != hash {
			out = append(out, r)
		}
	}
	return out
}

// recordFailure records a release that failed with class: quarantined when it failed
// verification (or was rejected) or when some of it was applied, and, when it stalled (the
// release or the pipeline is wrong), remembered with the stage's definition, so that it is
// not tried again until a commit changes one or the other.
func (s *StageLedgerStatus) recordFailure(r ReleaseRecord, class FailureClass, applied bool, stage *planner.Stage) {
	if class == FailureVerification || applied {
		s.recordFailed(r)
	}
	if class == FailureStalled {
		stall := r
		stall.Stage = stageFingerprint(stage)
		s.Stalled = &stall
	}
}

// recordRestored makes the known-good release good current again, restored by execution by.
func (s *StageLedgerStatus) recordRestored(good ReleaseRecord, by string, at *metav1.Time) {
	good.RestoredBy, good.At = by, at
	s.Current = &good
}

// rollbackTo decides whether a failed stage rolls back: only when the failed release changed
// the cluster, the stage asks for rollbacks, and a known-good release exists. Otherwise it
// says why not.
func rollbackTo(stage *planner.Stage, good *ReleaseRecord, applied bool) (ok bool, whyNot string) {
	switch {
	case !applied:
		return false, "nothing was applied to the cluster"
	case !stage.Rollback:
		return false, "rollback is off for this stage"
	case good == nil:
		return false, "no known-good release to roll back to (first deploy of this stage)"
	}
	return true, ""
}

// restoredNote says, when a known-good commit now renders another release than the one
// verified, why: the daemon's configuration changed since.
func restoredNote(good ReleaseRecord, hash string) string {
	if hash == good.Hash {
		return ""
	}
	return fmt.Sprintf("commit %s now renders release %s, not %s: the daemon's configuration changed since", short(good.Commit), releaseID(hash), releaseID(good.Hash))
}
