package reconciler

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
	l := r.ledgerCache[key]
	r.mu.Unlock()
	if l != nil {
		return l, nil
	}
	l, err := r.store.Ledger(ctx, pipeline, stage)
	if err != nil {
		return nil, err
	}
	r.cacheLedger(key, l)
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
			r.cacheLedger(key, l)
			return nil
		}
		r.forget(key)
		if !apierrors.IsConflict(err) || attempt == 3 {
			return err
		}
	}
}

func (r *Reconciler) cacheLedger(key string, l *StageLedger) {
	r.mu.Lock()
	r.ledgerCache[key] = l.DeepCopy()
	r.mu.Unlock()
}

func (r *Reconciler) forget(key string) {
	r.mu.Lock()
	delete(r.ledgerCache, key)
	r.mu.Unlock()
}
