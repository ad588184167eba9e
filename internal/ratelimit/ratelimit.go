// Package ratelimit is the client-side rate limit of ebb's Kubernetes clients: client-go's
// token bucket, with the same rate and burst, and two queues in front of it. A request whose
// context is marked Urgent (a rollback, a verification, and the records of executions that
// roll back or verify) takes the next token before the requests that wait and are not, so a
// failing release is rolled back within seconds while hundreds of first deploys queue for
// the same client.
//
// Nothing here decides what is urgent: the reconciler marks the contexts, client-go hands
// each request's context to RateLimiter.Wait (rest.Request.tryThrottle).
package ratelimit

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

type urgentKey struct{}

// Urgent returns a copy of ctx whose Kubernetes requests go before the others that wait for
// a client's rate limit.
func Urgent(ctx context.Context) context.Context {
	if IsUrgent(ctx) {
		return ctx
	}
	return context.WithValue(ctx, urgentKey{}, true)
}

// IsUrgent reports whether ctx was marked Urgent.
func IsUrgent(ctx context.Context) bool {
	v, _ := ctx.Value(urgentKey{}).(bool)
	return v
}

// normalEvery bounds the share of the tokens urgent requests take while others wait: every
// normalEvery-th token then goes to a request that is not urgent. Urgent traffic is small (a
// rollback or a verification sends a few requests; their waits are watches), so it is served
// first; the bound only makes sure that a flood of it can slow the rest, never stop it.
const normalEvery = 10

// class is a waiting request's queue.
type class int

const (
	urgent class = iota
	normal
	classes
)

// Limiter is a token bucket of a rate and a burst (golang.org/x/time/rate, as client-go's
// own), whose tokens go first to urgent requests. Requests of one class are served in the
// order they came. It implements flowcontrol.RateLimiter.
type Limiter struct {
	qps    float32
	bucket *rate.Limiter

	mu      sync.Mutex
	waiting [classes][]chan struct{}
	// urgentRun counts the tokens given to urgent requests in a row while normal ones waited.
	urgentRun int
	// dispatching is set while a goroutine hands out tokens to the waiters; it ends when
	// none waits.
	dispatching bool
}

var _ flowcontrol.RateLimiter = (*Limiter)(nil)

// New returns a Limiter of qps requests a second sustained and burst above it (at least 1).
// qps must be above 0.
func New(qps float32, burst int) *Limiter {
	return &Limiter{qps: qps, bucket: rate.NewLimiter(rate.Limit(qps), max(burst, 1))}
}

// Config returns a copy of cfg whose clients share one Limiter of cfg's QPS and Burst
// (client-go's defaults, 5 and 10, when unset). A config that has a RateLimiter already, or a
// negative QPS (no limit), is copied as it is.
func Config(cfg *rest.Config) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	if cfg.RateLimiter != nil || cfg.QPS < 0 {
		return cfg
	}
	qps, burst := cfg.QPS, cfg.Burst
	if qps == 0 {
		qps = rest.DefaultQPS
	}
	if burst == 0 {
		burst = rest.DefaultBurst
	}
	cfg.RateLimiter = New(qps, burst)
	return cfg
}

// Wait returns nil once the request of ctx has a token, or ctx's error if ctx ends first. A
// token that came as ctx ended is kept: Wait then returns nil.
func (l *Limiter) Wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := normal
	if IsUrgent(ctx) {
		c = urgent
	}
	l.mu.Lock()
	if l.idleLocked() && l.bucket.Allow() {
		l.mu.Unlock()
		return nil
	}
	granted := make(chan struct{})
	l.waiting[c] = append(l.waiting[c], granted)
	if !l.dispatching {
		l.dispatching = true
		go l.dispatch()
	}
	l.mu.Unlock()

	select {
	case <-granted:
		return nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, w := range l.waiting[c] {
		if w == granted {
			l.waiting[c] = append(l.waiting[c][:i], l.waiting[c][i+1:]...)
			return ctx.Err()
		}
	}
	return nil
}

// Accept waits for a token, however long it takes.
func (l *Limiter) Accept() { _ = l.Wait(context.Background()) }

// TryAccept takes a token if one is free and nobody waits for it.
func (l *Limiter) TryAccept() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.idleLocked() && l.bucket.Allow()
}

// QPS returns the sustained rate.
func (l *Limiter) QPS() float32 { return l.qps }

// Stop does nothing, as for client-go's token bucket: a Limiter holds no goroutine while
// nobody waits.
func (l *Limiter) Stop() {}

// idleLocked reports whether no request waits; l.mu is held.
func (l *Limiter) idleLocked() bool {
	return len(l.waiting[urgent]) == 0 && len(l.waiting[normal]) == 0
}

// dispatch hands each token, as the bucket fills, to the next waiter, until none waits.
func (l *Limiter) dispatch() {
	for {
		l.mu.Lock()
		if l.idleLocked() {
			l.dispatching = false
			l.mu.Unlock()
			return
		}
		if l.bucket.Allow() {
			l.grantLocked()
			l.mu.Unlock()
			continue
		}
		// Only this goroutine takes tokens while requests wait, so the next one is due after
		// the time the bucket takes to fill up to it.
		wait := time.Duration((1 - l.bucket.Tokens()) / float64(l.qps) * float64(time.Second))
		l.mu.Unlock()
		time.Sleep(max(wait, 100*time.Microsecond))
	}
}

// grantLocked gives a token to the first urgent waiter, or to the first normal one when none
// is urgent or urgent ones had normalEvery-1 tokens in a row while it waited; l.mu is held.
func (l *Limiter) grantLocked() {
	c := urgent
	switch {
	case len(l.waiting[urgent]) == 0:
		c = normal
	case len(l.waiting[normal]) > 0 && l.urgentRun >= normalEvery-1:
		c = normal
	}
	if c == urgent && len(l.waiting[normal]) > 0 {
		l.urgentRun++
	} else {
		l.urgentRun = 0
	}
	close(l.waiting[c][0])
	l.waiting[c][0] = nil
	l.waiting[c] = l.waiting[c][1:]
}
