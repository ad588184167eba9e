package ratelimit

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

// The tests run in a synctest bubble: time is the bubble's, so what they assert of it is
// exact, not a guess about a busy machine; synctest.Wait lets each waiter queue before the
// next comes.

// order starts one waiter per ctx of ctxs, each queued before the next starts, and returns
// their indexes in the order they got a token.
func order(t *testing.T, l *Limiter, ctxs []context.Context) []int {
	t.Helper()
	var (
		mu  sync.Mutex
		got []int
		wg  sync.WaitGroup
	)
	for i, ctx := range ctxs {
		wg.Go(func() {
			assert.NoError(t, l.Wait(ctx))
			mu.Lock()
			got = append(got, i)
			mu.Unlock()
		})
		synctest.Wait()
	}
	wg.Wait()
	return got
}

func TestUrgentGoesFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(20, 1)
		require.True(t, l.TryAccept()) // the burst is spent: the next ones wait
		bg, hurry := context.Background(), Urgent(context.Background())
		got := order(t, l, []context.Context{bg, bg, bg, hurry, hurry, bg})
		// The urgent ones came after three waited, and went first, in the order they came.
		assert.Equal(t, []int{3, 4, 0, 1, 2, 5}, got)
		assertIdle(t, l)
	})
}

func TestNormalRequestsStillProgress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(100, 1)
		require.True(t, l.TryAccept())
		var ctxs []context.Context
		ctxs = append(ctxs, context.Background(), context.Background())
		for range 25 {
			ctxs = append(ctxs, Urgent(context.Background()))
		}
		got := order(t, l, ctxs)
		require.Len(t, got, len(ctxs))
		// Every tenth token goes to a waiting normal request, however many urgent ones wait.
		assert.Equal(t, 0, got[normalEvery-1])
		assert.Equal(t, 1, got[2*normalEvery-1])
		assertIdle(t, l)
	})
}

func TestRateAndBurst(t *testing.T) {
	for _, tc := range []struct {
		name   string
		qps    float32
		burst  int
		urgent bool
	}{
		{"normal", 50, 5, false},
		{"urgent", 50, 5, true},
		{"slow", 2, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := New(tc.qps, tc.burst)
				assert.Equal(t, tc.qps, l.QPS())
				ctx := context.Background()
				if tc.urgent {
					ctx = Urgent(ctx)
				}
				start := time.Now()
				for range tc.burst {
					require.NoError(t, l.Wait(ctx))
				}
				assert.Zero(t, time.Since(start), "the burst waits for nothing")
				const more = 10
				var wg sync.WaitGroup
				for range more {
					wg.Go(func() { assert.NoError(t, l.Wait(ctx)) })
				}
				wg.Wait()
				took := time.Since(start)
				want := time.Duration(float64(more) / float64(tc.qps) * float64(time.Second))
				assert.GreaterOrEqual(t, took, want, "tokens come no faster than qps")
				assert.Less(t, took, want+time.Duration(more)*time.Millisecond, "tokens come as soon as the bucket has them")
				assertIdle(t, l)
			})
		})
	}
}

func TestCancelFreesTheWaiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(0.1, 1) // a token every 10s
		require.True(t, l.TryAccept())
		ctx, cancel := context.WithCancel(Urgent(context.Background()))
		errc := make(chan error, 1)
		go func() { errc <- l.Wait(ctx) }()
		synctest.Wait()
		assert.False(t, l.TryAccept(), "a request waits: nobody takes a token before it")
		cancel()
		start := time.Now()
		assert.ErrorIs(t, <-errc, context.Canceled)
		assert.Zero(t, time.Since(start), "cancelled at once, not at the next token")
		l.mu.Lock()
		assert.Empty(t, l.waiting[urgent], "the cancelled waiter is no longer queued")
		l.mu.Unlock()
		assertIdle(t, l)

		// The token the cancelled request did not take goes to the next one.
		done, cancel2 := context.WithCancel(context.Background())
		cancel2()
		assert.ErrorIs(t, l.Wait(done), context.Canceled, "an ended context waits for nothing")
		start = time.Now()
		require.NoError(t, l.Wait(context.Background()))
		assert.LessOrEqual(t, time.Since(start), 10*time.Second)
	})
}

// assertIdle checks that once nobody waits, no goroutine of l runs: the dispatcher ended.
func assertIdle(t *testing.T, l *Limiter) {
	t.Helper()
	time.Sleep(time.Duration(float64(time.Second)/float64(l.qps)) + time.Millisecond) // past the dispatcher's longest sleep
	synctest.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	assert.False(t, l.dispatching, "a dispatcher runs with nobody waiting")
	assert.True(t, l.idleLocked())
}

func TestUrgentContext(t *testing.T) {
	ctx := context.Background()
	assert.False(t, IsUrgent(ctx))
	u := Urgent(ctx)
	assert.True(t, IsUrgent(u))
	assert.Equal(t, u, Urgent(u), "marking twice adds nothing")
	// The records are written with a context that outlives a shutdown: it keeps the mark.
	assert.True(t, IsUrgent(context.WithoutCancel(u)))
	c, cancel := context.WithTimeout(u, time.Second)
	defer cancel()
	assert.True(t, IsUrgent(c))
}

func TestConfig(t *testing.T) {
	own := flowcontrol.NewTokenBucketRateLimiter(1, 1)
	for _, tc := range []struct {
		name      string
		cfg       rest.Config
		qps       float32
		unlimited bool
		kept      flowcontrol.RateLimiter
	}{
		{name: "qps and burst", cfg: rest.Config{QPS: 100, Burst: 200}, qps: 100},
		{name: "client-go's defaults", cfg: rest.Config{}, qps: rest.DefaultQPS},
		{name: "no limit", cfg: rest.Config{QPS: -1}, unlimited: true},
		{name: "a limiter of the caller's", cfg: rest.Config{QPS: 100, RateLimiter: own}, kept: own},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.cfg
			got := Config(&in)
			require.NotSame(t, &in, got, "a copy")
			switch {
			case tc.unlimited:
				assert.Nil(t, got.RateLimiter)
			case tc.kept != nil:
				assert.Same(t, tc.kept, got.RateLimiter)
			default:
				require.IsType(t, &Limiter{}, got.RateLimiter)
				assert.Equal(t, tc.qps, got.RateLimiter.QPS())
				assert.Nil(t, in.RateLimiter, "the original is left as it was")
			}
		})
	}
	a, b := Config(&rest.Config{QPS: 1, Burst: 1}), Config(&rest.Config{QPS: 1, Burst: 1})
	assert.NotSame(t, a.RateLimiter, b.RateLimiter, "each call has a bucket of its own")
}
