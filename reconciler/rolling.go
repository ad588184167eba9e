package reconciler

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// rolling is the rolling model: after an approval when the stage asks for one, Create
// namespace/secret/service, Update deployment (the Deployment controller replaces the pods),
// Verify deployment (every gate, then pruning what the release no longer has).
type rolling struct{}

func (rolling) deploy(ctx context.Context, s *stageRun) error {
	if err := s.promote(ctx); err != nil {
		return err
	}
	return s.rollOut(ctx)
}

// restore reapplies the known-good release with the same tasks, after removing a first phase
// the failed release may have left (the stage may have been phased then).
func (rolling) restore(ctx context.Context, s *stageRun) error {
	if err := s.cluster.deletePhase1(ctx, s.d.Namespace, s.d.Deployment); err != nil {
		return &taskError{task: TaskUpdateDeployment, err: err}
	}
	return s.rollOut(ctx)
}

// discard has nothing to remove: the approval comes before anything is applied.
func (rolling) discard(context.Context, *stageRun) error { return nil }

// rollOut applies the whole release and verifies it as it takes all the traffic.
func (s *stageRun) rollOut(ctx context.Context) error {
	resources, deployments := split(s.d.Objects.Decode())
	if err := s.task(ctx, s.rec, TaskCreateResources, false, func(ctx context.Context) error {
		if err := s.createResources(ctx, resources); err != nil {
			return err
		}
		if s.rollback() {
			return s.cluster.forceStatefulSetRollback(ctx, resources, rolloutTimeout(s))
		}
		return nil
	}); err != nil {
		return err
	}
	if err := s.task(ctx, s.rec, TaskUpdateDeployment, false, func(ctx context.Context) error {
		return s.apply(ctx, deployments)
	}); err != nil {
		return err
	}
	err := s.task(ctx, s.rec, TaskVerifyDeployment, true, func(ctx context.Context) error {
		if err := s.verify(ctx, subject{at: atFull, deployments: names(deployments), objects: resources, service: s.d.Service, live: true}); err != nil {
			return err
		}
		return s.prune(ctx, s.d.Objects.Decode())
	})
	s.deploymentEvents(ctx, deployments, err)
	return err
}

// apply applies objs to the stage's cluster, adding them to its inventory first.
func (s *stageRun) apply(ctx context.Context, objs []*unstructured.Unstructured) error {
	applied, err := s.r.applyObjects(ctx, s.cluster, s.pipeline, s.stage().Name, objs)
	s.applied = append(s.applied, applied...)
	s.sent = append(s.sent, objs[:len(applied)]...)
	return err
}

// appliedDeployment returns Deployment name of the stage's namespace as this run applied it,
// and its generation after the apply: what the gates wait for, without reading it again. It
// returns nil, 0 when this run did not apply it.
func (s *stageRun) appliedDeployment(name string) (*unstructured.Unstructured, int64) {
	for i := len(s.applied) - 1; i >= 0; i-- {
		if o := s.applied[i].Object; o.Group == "apps" && o.Kind == "Deployment" && o.Namespace == s.stage().Namespace && o.Name == name {
			return s.sent[i], s.applied[i].Generation
		}
	}
	return nil, 0
}

// settle, once the release took all the traffic and passed, records what its controllers
// changed since the apply (a Deployment's status) as in sync, so that the first drift check
// after a release costs no request (ssa.Manager.Settle).
func (s *stageRun) settle(ctx context.Context) {
	s.cluster.SSA.Settle(ctx, s.cluster.Live, s.r.inSync(s.pipeline, s.stage().Name), s.applied)
}

// createResources makes sure the stage's namespace exists and applies the objects the
// Deployments need: namespace, secrets, service, config.
func (s *stageRun) createResources(ctx context.Context, resources []*unstructured.Unstructured) error {
	ensure := !hasNamespace(resources, s.d.Namespace)
	if ensure {
		if err := s.cluster.EnsureNamespace(ctx, s.d.Namespace); err != nil {
			return err
		}
	}
	err := s.apply(ctx, resources)
	if ensure && apierrors.IsNotFound(err) && s.cluster.forgetNamespace(s.d.Namespace) {
		// The namespace was deleted since ebb last made sure of it: create it again.
		if err := s.cluster.EnsureNamespace(ctx, s.d.Namespace); err != nil {
			return err
		}
		err = s.apply(ctx, resources)
	}
	return err
}

// prune deletes what the stage's inventory holds beyond keep, the release it now runs.
func (s *stageRun) prune(ctx context.Context, keep []*unstructured.Unstructured) error {
	deleted, err := s.r.prune(ctx, s.cluster, s.pipeline, s.stage().Name, keep)
	var pruned []string
	for _, d := range deleted {
		if d.Exists {
			pruned = append(pruned, d.String())
		}
	}
	if len(pruned) > 0 {
		s.log.Info("pruned objects no longer in the release", "stage", s.stage().Name, "objects", pruned)
	}
	return err
}

// deploymentEvents records on each Deployment of the release what this run did to it: a
// verified release, a failed one, or a rollback.
func (s *stageRun) deploymentEvents(ctx context.Context, deployments []*unstructured.Unstructured, err error) {
	e, target := s.run, s.cluster
	if errors.Is(err, errParked) {
		return
	}
	typ, reason := "Normal", "ReleaseVerified"
	msg := fmt.Sprintf("%s: release of commit %s verified", e.x.Spec.DisplayName, e.x.Spec.ShortCommit)
	switch {
	case err != nil && e.x.Spec.Kind == KindRollback:
		typ, reason, msg = "Warning", "RollbackFailed", fmt.Sprintf("%s failed: %v", e.x.Spec.DisplayName, unwrapTask(err))
	case err != nil:
		typ, reason, msg = "Warning", "ReleaseFailed", fmt.Sprintf("%s: release of commit %s failed: %v", e.x.Spec.DisplayName, e.x.Spec.ShortCommit, unwrapTask(err))
	case e.x.Spec.Kind == KindRollback:
		typ, reason, msg = "Warning", "RolledBack", fmt.Sprintf("%s restored the release of commit %s", e.x.Spec.DisplayName, e.x.Spec.ShortCommit)
	}
	for _, d := range deployments {
		recordEvent(ctx, target.Typed, e.log, eventRef{apiVersion: "apps/v1", kind: "Deployment", namespace: d.GetNamespace(), name: d.GetName()}, typ, reason, msg)
	}
}

func names(objs []*unstructured.Unstructured) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.GetName()
	}
	return out
}

func hasNamespace(objs []*unstructured.Unstructured, ns string) bool {
	for _, o := range objs {
		if o.GetKind() == "Namespace" && o.GetName() == ns {
			return true
		}
	}
	return false
}
