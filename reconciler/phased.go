package reconciler

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Task names of the rolling model with phases.
const (
	TaskDeployPhase1       = "Deploy phase 1"
	TaskVerifyPhase1       = "Verify phase 1"
	TaskDeployRolloutPhase = "Deploy rollout phase"
	TaskFinishRolloutPhase = "Finish rollout phase"
	TaskVerifyRolloutPhase = "Verify rollout phase"
)

// labelPhase marks the pods of a phase-1 Deployment, so that its selector never matches the
// main Deployment's pods, while the Service (which does not select on it) sends traffic to both.
const labelPhase = "ebb.dev/phase"

// phased is the rolling model in phases: a first subset of the new release runs beside the
// old one behind the same Service and is verified (and approved, when the stage asks), then
// the whole Deployment is updated and the subset removed.
type phased struct{}

func (phased) deploy(ctx context.Context, s *stageRun) error {
	d := s.d
	resources, deployments := split(d.Objects.Decode())
	main := find(deployments, d.Deployment)
	if main == nil {
		return &taskError{task: TaskDeployPhase1, err: stalled("the release has no Deployment %q to roll out in phases", d.Deployment)}
	}
	phase1 := phase1Deployment(main, d.Stage.Phases[0].Replicas)
	if err := s.task(ctx, s.rec, TaskDeployPhase1, false, func(ctx context.Context) error {
		if err := s.createResources(ctx, resources); err != nil {
			return err
		}
		return s.apply(ctx, []*unstructured.Unstructured{phase1})
	}); err != nil {
		return err
	}
	if err := s.task(ctx, s.rec, TaskVerifyPhase1, true, func(ctx context.Context) error {
		return s.verify(ctx, subject{at: atCanary, deployments: []string{phase1.GetName()}, objects: resources, service: d.Service, live: true})
	}); err != nil {
		return err
	}
	if err := s.promote(ctx); err != nil {
		return err
	}
	if err := s.task(ctx, s.rec, TaskDeployRolloutPhase, false, func(ctx context.Context) error {
		return s.apply(ctx, deployments)
	}); err != nil {
		return err
	}
	if err := s.task(ctx, s.rec, TaskFinishRolloutPhase, false, func(ctx context.Context) error {
		return s.cluster.deletePhase1(ctx, d.Namespace, d.Deployment)
	}); err != nil {
		return err
	}
	err := s.task(ctx, s.rec, TaskVerifyRolloutPhase, true, func(ctx context.Context) error {
		if err := s.verify(ctx, subject{at: atFull, deployments: names(deployments), objects: resources, service: d.Service, live: true}); err != nil {
			return err
		}
		return s.prune(ctx, d.Objects.Decode())
	})
	s.deploymentEvents(ctx, deployments, err)
	return err
}

// restore removes the failed release's first phase and reapplies the known-good release
// whole, as the rolling model does.
func (phased) restore(ctx context.Context, s *stageRun) error { return rolling{}.restore(ctx, s) }

// discard removes the first phase nobody approved.
func (phased) discard(ctx context.Context, s *stageRun) error {
	return s.cluster.deletePhase1(ctx, s.d.Namespace, s.d.Deployment)
}

// phase1Deployment is the service's Deployment renamed <name>-phase1, scaled to replicas,
// with its pods marked by labelPhase.
func phase1Deployment(main *unstructured.Unstructured, replicas int32) *unstructured.Unstructured {
	p := main.DeepCopy()
	p.SetName(phase1Name(main.GetName()))
	p.SetResourceVersion("")
	_ = unstructured.SetNestedField(p.Object, int64(replicas), "spec", "replicas")
	addSelectorLabel(p, labelPhase, "1")
	return p
}

func phase1Name(deployment string) string { return deployment + "-phase1" }

// deletePhase1 removes the phase-1 Deployment of deployment, if there is one.
func (c *Cluster) deletePhase1(ctx context.Context, ns, deployment string) error {
	return c.deleteDeployment(ctx, ns, phase1Name(deployment))
}

// deleteDeployment deletes Deployment ns/name and, in the background, its pods; a missing
// one is fine.
func (c *Cluster) deleteDeployment(ctx context.Context, ns, name string) error {
	policy := metav1.DeletePropagationBackground
	err := c.Typed.AppsV1().Deployments(ns).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &policy})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete Deployment %s/%s in cluster %q: %w", ns, name, c.Name, err)
	}
	return nil
}

// addSelectorLabel adds key=value to a Deployment's labels, selector and pod template.
func addSelectorLabel(d *unstructured.Unstructured, key, value string) {
	labels := d.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	labels[key] = value
	d.SetLabels(labels)
	_ = unstructured.SetNestedField(d.Object, value, "spec", "selector", "matchLabels", key)
	_ = unstructured.SetNestedField(d.Object, value, "spec", "template", "metadata", "labels", key)
}

// find returns the object named name, or nil.
func find(objs []*unstructured.Unstructured, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetName() == name {
			return o
		}
	}
	return nil
}
