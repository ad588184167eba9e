package reconciler

import "context"

// metricsGate holds the stage's metric thresholds for their whole window, once real traffic
// reaches the release (not a green color behind its preview Service).
type metricsGate struct{}

func (metricsGate) name() string { return "metrics" }

func (metricsGate) applies(_ *stageRun, sub subject) bool { return sub.at != atPromote && sub.live }

func (metricsGate) check(ctx context.Context, s *stageRun, _ subject) error {
	return newMetricsCheck(s.stage().Verify.Metrics, s.r.metricsSecrets()).Run(ctx, s.r.opts.HTTPClient) // metricscheck.go
}
