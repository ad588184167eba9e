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

// phased runs a rolling update in phases: a first subset of the new release runs beside the
// old one behind the same Service and is verified (and approved, when the stage asks), then
// the whole Deployment is updated and the subset removed.
func (e *run) phased(ctx context.Context, cluster *Cluster, pipeline string, d *Desired, rec *StageRecord) error {
	resources, deployments := split(d.Objects)
	main := find(deployments, d.Deployment)
	if main == nil {
		return &taskError{task: TaskDeployPhase1, err: stalled("the release has no Deployment %q to roll out in phases", d.Deployment)}
	}
	phase1 := phase1Deployment(main, d.Stage.Phases[0].Replicas)
	if err := e.task(ctx, rec, TaskDeployPhase1, false, func(ctx context.Context) error {
		if err := e.createResources(ctx, cluster, pipeline, d, resources); err != nil {
			return err
		}
		return e.r.apply(ctx, cluster, pipeline, d.Stage.Name, []*unstructured.Unstructured{phase1})
	}); err != nil {
		return err
	}
	if err := e.task(ctx, rec, TaskVerifyPhase1, true, func(ctx context.Context) error {
		return e.verify(ctx, cluster, pipeline, d.Stage, []string{phase1.GetName()}, d.Service)
	}); err != nil {
		return err
	}
	if err := e.approvalGate(ctx, pipeline, d, rec); err != nil {
		return err
	}
	if err := e.task(ctx, rec, TaskDeployRolloutPhase, false, func(ctx context.Context) error {
		return e.r.apply(ctx, cluster, pipeline, d.Stage.Name, deployments)
	}); err != nil {
		return err
	}
	if err := e.task(ctx, rec, TaskFinishRolloutPhase, false, func(ctx context.Context) error {
		return cluster.deletePhase1(ctx, d.Namespace, d.Deployment)
	}); err != nil {
		return err
	}
	err := e.task(ctx, rec, TaskVerifyRolloutPhase, true, func(ctx context.Context) error {
		if err := e.verify(ctx, cluster, pipeline, d.Stage, names(deployments), d.Service); err != nil {
			return err
		}
		return e.prune(ctx, cluster, pipeline, d.Stage, d.Objects)
	})
	e.deploymentEvents(ctx, cluster, deployments, err)
	return err
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
