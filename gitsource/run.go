package gitsource

import (
	"context"
	"math/rand/v2"
	"time"
)

// Trigger asks Run to poll now, as a webhook or a local watch does on a push. It never blocks:
// triggers that arrive while one is pending, or during the debounce window, make one poll.
func (s *Source) Trigger() {
	s.metrics.triggers.WithLabelValues(s.opts.Name).Inc()
	select {
	case s.trigger <- struct{}{}:
	default:
	}
}

// Run polls at once, then every Interval and on each Trigger, until ctx is done, calling
// onChange with each snapshot that differs from the one served before the poll (so a fresh
// Source delivers its first snapshot; one polled before Run does not deliver it again: use
// Last). After failed polls it waits with
// exponential back-off and jitter instead of Interval; a Trigger still polls at once, since a
// push notification is good evidence that the remote is back. onChange runs on Run's
// goroutine: a slow onChange delays the next poll, never overlaps it. With CredentialsDir,
// Run also watches that directory and polls at once with credentials that changed. Run
// returns ctx's error.
func (s *Source) Run(ctx context.Context, onChange func(*Snapshot)) error {
	if s.opts.CredentialsDir != "" {
		go s.watchCredentials(ctx)
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		case <-s.trigger:
			if !s.debounce(ctx) {
				return ctx.Err()
			}
		}
		snap, changed, err := s.Poll(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil && changed && onChange != nil {
			onChange(snap)
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(s.nextDelay())
	}
}

// debounce waits out the debounce window, absorbing triggers that arrive in it. It returns
// false if ctx ended first.
func (s *Source) debounce(ctx context.Context) bool {
	if s.opts.Debounce <= 0 {
		return true
	}
	t := time.NewTimer(s.opts.Debounce)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-s.trigger:
		case <-t.C:
			return true
		}
	}
}

// nextDelay is Interval after a success and the back-off after failures.
func (s *Source) nextDelay() time.Duration {
	failures := s.Status().ConsecutiveFailures
	if failures == 0 {
		return s.opts.Interval
	}
	return backoff(failures, s.opts.MinBackoff, s.opts.MaxBackoff, rand.Float64())
}

// backoff returns the wait after the given number of consecutive failures (1 or more): lo
// doubled per further failure, capped at hi, then spread by ±20% with jitter in [0, 1) so
// that daemons which lost the same remote do not come back in step.
func backoff(failures int, lo, hi time.Duration, jitter float64) time.Duration {
	d := lo
	for i := 1; i < failures && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	spread := 0.8 + 0.4*jitter
	return time.Duration(float64(d) * spread)
}
