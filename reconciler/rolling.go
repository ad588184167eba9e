package reconciler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"ebb.dev/ebb/planner"
)

// runModel runs the tasks of the stage's deployment model.
func (e *run) runModel(ctx context.Context, cluster *Cluster, t *Target, d *Desired, rec *StageRecord) error {
	switch {
	case d.Stage.Model == planner.ModelBlueGreen:
		return e.blueGreen(ctx, cluster, t.Name(), d, rec)
	case len(d.Stage.Phases) > 0:
		return e.phased(ctx, cluster, t.Name(), d, rec)
	default:
		if err := e.approvalGate(ctx, t.Name(), d, rec); err != nil {
			return err
		}
		return e.rolling(ctx, cluster, t.Name(), d, rec)
	}
}

// rolling runs the rolling model: Create namespace/secret/service, Update deployment, Verify
// deployment. Rollbacks of rolling and phased stages run the same tasks with the known-good
// release.
func (e *run) rolling(ctx context.Context, cluster *Cluster, pipeline string, d *Desired, rec *StageRecord) error {
	resources, deployments := split(d.Objects)
	if err := e.task(ctx, rec, TaskCreateResources, false, func(ctx context.Context) error {
		return e.createResources(ctx, cluster, pipeline, d, resources)
	}); err != nil {
		return err
	}
	if err := e.task(ctx, rec, TaskUpdateDeployment, false, func(ctx context.Context) error {
		return e.r.apply(ctx, cluster, pipeline, d.Stage.Name, deployments)
	}); err != nil {
		return err
	}
	err := e.task(ctx, rec, TaskVerifyDeployment, true, func(ctx context.Context) error {
		if err := e.verify(ctx, cluster, pipeline, d.Stage, names(deployments), d.Service); err != nil {
			return err
		}
		return e.prune(ctx, cluster, pipeline, d.Stage, d.Objects)
	})
	e.deploymentEvents(ctx, cluster, deployments, err)
	return err
}

// createResources makes sure the stage's namespace exists and applies the objects the
// Deployments need: namespace, secrets, service, config.
func (e *run) createResources(ctx context.Context, cluster *Cluster, pipeline string, d *Desired, resources []*unstructured.Unstructured) error {
	if !hasNamespace(resources, d.Namespace) {
		if err := cluster.EnsureNamespace(ctx, d.Namespace); err != nil {
			return err
		}
	}
	return e.r.apply(ctx, cluster, pipeline, d.Stage.Name, resources)
}

// prune deletes what the stage's inventory holds beyond keep, the release it now runs.
func (e *run) prune(ctx context.Context, cluster *Cluster, pipeline string, stage *planner.Stage, keep []*unstructured.Unstructured) error {
	deleted, err := e.r.prune(ctx, cluster, pipeline, stage.Name, keep)
	var pruned []string
	for _, d := range deleted {
		if d.Exists {
			pruned = append(pruned, d.String())
		}
	}
	if len(pruned) > 0 {
		e.log.Info("pruned objects no longer in the release", "stage", stage.Name, "objects", pruned)
	}
	return err
}

// verify checks a deployed release: every named Deployment rolls out, then the stage's health
// check passes (with "{service}" naming service), then its metric thresholds hold.
func (e *run) verify(ctx context.Context, cluster *Cluster, pipeline string, stage *planner.Stage, deployments []string, service string) error {
	start := time.Now()
	defer func() {
		e.r.metrics.verifyDuration.WithLabelValues(pipeline, stage.Name).Observe(time.Since(start).Seconds())
	}()
	if err := e.verifyRollout(ctx, cluster, stage, deployments); err != nil {
		return err
	}
	if err := e.healthCheck(ctx, stage, service); err != nil {
		return err
	}
	return e.metricsCheck(ctx, stage)
}

// verifyRollout waits for each Deployment (in the stage's namespace) to roll out.
func (e *run) verifyRollout(ctx context.Context, cluster *Cluster, stage *planner.Stage, deployments []string) error {
	timeout := stage.Verify.Rollout.Timeout.Duration
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	for _, name := range deployments {
		if err := cluster.WaitRollout(ctx, stage.Namespace, name, timeout); err != nil {
			return err
		}
	}
	return nil
}

// healthCheck runs the stage's health check, if any, against service.
func (e *run) healthCheck(ctx context.Context, stage *planner.Stage, service string) error {
	hc := stage.Verify.HealthCheck
	if hc == nil {
		return nil
	}
	check := HealthCheck{
		URL:      strings.ReplaceAll(hc.URL, "{service}", service),
		Interval: hc.Interval.Duration, Successes: hc.Successes, Failures: hc.Failures, Timeout: hc.Timeout.Duration,
	}
	return check.Run(ctx, e.r.opts.HTTPClient)
}

// deploymentEvents records on each Deployment of the release what this run did to it: a
// verified release, a failed one, or a rollback.
func (e *run) deploymentEvents(ctx context.Context, target *Cluster, deployments []*unstructured.Unstructured, err error) {
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
