package reconciler

import (
	"context"
	"sync"
)

// Executions wait for one of Options.MaxConcurrent slots before they write to a cluster. When
// hundreds wait (the first sync of every pipeline), a release of an app that runs already
// goes first: it changes what serves traffic, and when it fails its stage is rolled back,
// while a first deploy serves nobody yet and has nothing to roll back to. Among executions of
// one priority, the first to wait is the first served.

// slotPriority orders the executions that wait for a slot.
type slotPriority int

const (
	// priorityUpdate: the execution changes a stage that runs a release (one it may have to
	// roll back).
	priorityUpdate slotPriority = iota
	// priorityFirst: every stage of the execution is deployed for the first time.
	priorityFirst
	priorities
)

// priorityOf returns the priority of an execution of t, given its stages' ledgers.
func priorityOf(t *Target, ledgers map[string]*StageLedgerStatus) slotPriority {
	for _, d := range t.Stages {
		if l := ledgers[d.Stage.Name]; l != nil && l.Current != nil {
			return priorityUpdate
		}
	}
	return priorityFirst
}

// slotQueue hands out a fixed number of slots, by priority, then in the order asked.
type slotQueue struct {
	mu      sync.Mutex
	free    int
	waiting [priorities][]chan struct{}
}

func newSlotQueue(n int) *slotQueue { return &slotQueue{free: n} }

// take waits for a slot; it returns ctx's error when ctx ends first.
func (q *slotQueue) take(ctx context.Context, p slotPriority) error {
	q.mu.Lock()
	if q.free > 0 {
		q.free--
		q.mu.Unlock()
		return nil
	}
	granted := make(chan struct{})
	q.waiting[p] = append(q.waiting[p], granted)
	q.mu.Unlock()
	select {
	case <-granted:
		return nil
	case <-ctx.Done():
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, c := range q.waiting[p] {
		if c == granted {
			q.waiting[p] = append(q.waiting[p][:i], q.waiting[p][i+1:]...)
			return ctx.Err()
		}
	}
	// Granted as ctx ended: pass the slot on.
	q.giveLocked()
	return ctx.Err()
}

// give returns a slot: to the first waiter of the highest priority, if any.
func (q *slotQueue) give() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.giveLocked()
}

func (q *slotQueue) giveLocked() {
	for p := range q.waiting {
		if w := q.waiting[p]; len(w) > 0 {
			q.waiting[p] = w[1:]
			close(w[0])
			return
		}
	}
	q.free++
}

// execSlot is an execution's share of Options.MaxConcurrent: held while it works, freed
// while it waits for a person or for a cluster to answer, so that waiting executions never
// keep others from running.
type execSlot struct {
	r        *Reconciler
	priority slotPriority
	held     bool
}

// take waits for a free slot.
func (s *execSlot) take(ctx context.Context) error {
	if s == nil || s.held {
		return nil
	}
	if err := s.r.slots.take(ctx, s.priority); err != nil {
		return errParked
	}
	s.held = true
	return nil
}

// free gives the slot back.
func (s *execSlot) free() {
	if s != nil && s.held {
		s.r.slots.give()
		s.held = false
	}
}
