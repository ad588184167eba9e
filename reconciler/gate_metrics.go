package reconciler

import "context"

// metricsGate holds the stage's metric thresholds for their whole window, once real traffic
// reaches the release (not a green color behind its preview Service).
type metricsGate struct{}

func (metricsGate) name() string { return "metrics" }

func (metricsGate) applies(_ *stageRun, sub subject) bool { return sub.at != atPromote && sub.live }

func (metricsGate) check(ctx context.Context, s *stageRun, _ subject) error {
	m := s.stage().Verify.Metrics
	check := MetricsCheck{Prometheus: m.Prometheus, Query: m.Query, Max: m.Max, Min: m.Min, Interval: m.Interval.Duration, For: m.For.Duration}
	return check.Run(ctx, s.r.opts.HTTPClient)
}
