package reconciler

import (
	"context"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	"ebb.dev/ebb/internal/ssa"
)

// objectsGate verifies the release's other objects whose readiness means something (see
// ssa.HasHealth: StatefulSets, DaemonSets, Jobs, claims, custom resources) the way kstatus
// reads them: it waits until every one is Current, and fails the release when one is Failed,
// or is still not Current when the rollout timeout passes, with kstatus' reason. With
// fail-fast on, a pod of a StatefulSet's new revision that cannot run (podFault) fails it at
// once, as the pods gate does for Deployments.
type objectsGate struct{}

func (objectsGate) name() string { return "objects" }

func (objectsGate) applies(_ *stageRun, sub subject) bool {
	return sub.at != atPromote && len(withHealth(sub.objects)) > 0
}

// objectsPoll is how often the objects' status is read again.
const objectsPoll = time.Second

func (objectsGate) check(ctx context.Context, s *stageRun, sub subject) error {
	objs := withHealth(sub.objects)
	timeout := rolloutTimeout(s)
	deadline := time.Now().Add(timeout)
	for {
		health, err := s.cluster.SSA.Health(ctx, objs)
		if err != nil {
			return err
		}
		var pending []string
		for _, h := range health {
			switch h.Status {
			case status.CurrentStatus:
			case status.FailedStatus:
				return verificationFailed("objects", "%s", h)
			default:
				pending = append(pending, h.String())
			}
		}
		if len(pending) == 0 {
			return nil
		}
		if s.stage().Verify.Pods.FailFast {
			if err := s.cluster.statefulSetPodFault(ctx, objs, s.stage().Verify.Pods); err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			return verificationFailed("objects", "not ready within %s: %s", timeout, strings.Join(pending, "; "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(objectsPoll):
		}
	}
}

func withHealth(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if ssa.HasHealth(o) {
			out = append(out, o)
		}
	}
	return out
}
