package reconciler

import (
	"context"
	"time"
)

// rolloutGate waits for each Deployment of the subject to roll out (see WaitRollout), within
// the stage's verify.rollout.timeout.
type rolloutGate struct{}

func (rolloutGate) name() string { return "rollout" }

func (rolloutGate) applies(_ *stageRun, sub subject) bool { return len(sub.deployments) > 0 }

func (rolloutGate) check(ctx context.Context, s *stageRun, sub subject) error {
	for _, name := range sub.deployments {
		_, generation := s.appliedDeployment(name)
		if err := s.cluster.WaitRollout(ctx, s.stage().Namespace, name, generation, rolloutTimeout(s)); err != nil {
			return err
		}
	}
	return nil
}

// rolloutTimeout is how long a stage's rollouts and traffic switches may take; default 5m.
func rolloutTimeout(s *stageRun) time.Duration {
	if t := s.stage().Verify.Rollout.Timeout.Duration; t > 0 {
		return t
	}
	return 5 * time.Minute
}
