package reconciler

import (
	"context"
	"strings"
)

// healthGate runs the stage's health check against the Service the verification reaches
// ("{service}" in its URL): the preview Service of a green color, else the stage's. A
// rollback needs one good answer: the release it restores passed the whole check when it
// was verified, and the stage should be back in seconds.
type healthGate struct{}

func (healthGate) name() string { return "healthCheck" }

func (healthGate) applies(_ *stageRun, sub subject) bool { return sub.at != atPromote }

func (healthGate) check(ctx context.Context, s *stageRun, sub subject) error {
	hc := s.stage().Verify.HealthCheck
	check := HealthCheck{
		URL:      strings.ReplaceAll(hc.URL, "{service}", sub.service),
		Interval: hc.Interval.Duration, Successes: hc.Successes, Failures: hc.Failures, Timeout: hc.Timeout.Duration,
	}
	if s.rollback() {
		check.Successes = 1
	}
	return check.Run(ctx, s.r.opts.HTTPClient)
}
