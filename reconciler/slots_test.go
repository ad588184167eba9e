package reconciler

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSlotQueueServesUpdatesFirst: with every slot taken, a waiting update of a running app
// gets the next free slot before first deploys that waited longer; among one priority the
// first to wait is served first; a waiter that gives up takes no slot.
func TestSlotQueueServesUpdatesFirst(t *testing.T) {
	q := newSlotQueue(1)
	require.NoError(t, q.take(context.Background(), priorityFirst))

	order := make(chan string, 3)
	gaveUp, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 1)
	go func() { errs <- q.take(gaveUp, priorityUpdate) }()
	queued(t, q, priorityUpdate, 1)
	cancel()
	assert.ErrorIs(t, <-errs, context.Canceled)
	queued(t, q, priorityUpdate, 0)

	for _, w := range []struct {
		name string
		p    slotPriority
	}{{"first-1", priorityFirst}, {"first-2", priorityFirst}, {"update", priorityUpdate}} {
		go func() {
			if q.take(context.Background(), w.p) == nil {
				order <- w.name
			}
		}()
		queued(t, q, w.p, map[string]int{"first-1": 1, "first-2": 2, "update": 1}[w.name])
	}
	var got []string
	for range 3 {
		q.give()
		got = append(got, <-order)
	}
	assert.Equal(t, []string{"update", "first-1", "first-2"}, got)
	q.give()
	assert.Equal(t, 1, q.free, "the last slot given back is free")
}

// queued waits until n executions of priority p wait.
func queued(t *testing.T, q *slotQueue, p slotPriority, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.waiting[p]) == n
	}, time.Second, time.Millisecond)
}
