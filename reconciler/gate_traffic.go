package reconciler

import "context"

// trafficGate, after a blue-green switch, waits until the stage's Service sends its traffic
// to the switched-to color's ready pods only (see waitEndpoints).
type trafficGate struct{}

func (trafficGate) name() string { return "traffic" }

func (trafficGate) applies(_ *stageRun, sub subject) bool { return sub.switched != "" }

func (trafficGate) check(ctx context.Context, s *stageRun, sub subject) error {
	return s.cluster.waitEndpoints(ctx, s.stage().Namespace, sub.service, sub.switched, rolloutTimeout(s))
}
