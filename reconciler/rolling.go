package reconciler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"ebb.dev/ebb/planner"
)

// runModel runs the tasks of the stage's deployment model.
func (e *run) runModel(ctx context.Context, target *Cluster, t *Target, d *Desired, rec *StageRecord) error {
	switch d.Stage.Model {
	case planner.ModelRolling, "":
		return e.rolling(ctx, target, t.Name(), d.Stage, d.Objects, rec)
	default:
		return &taskError{task: TaskCreateResources, err: fmt.Errorf("deployment model %q is not supported by this version of ebb", d.Stage.Model)}
	}
}

// rolling runs the rolling model: Create namespace/secret/service, Update deployment, Verify
// deployment. Rollbacks run the same tasks with the known-good release.
func (e *run) rolling(ctx context.Context, target *Cluster, pipeline string, stage *planner.Stage, objs []*unstructured.Unstructured, rec *StageRecord) error {
	resources, deployments := split(objs)
	if err := e.task(ctx, rec, TaskCreateResources, false, func(ctx context.Context) error {
		return target.Apply(ctx, pipeline, stage.Name, resources)
	}); err != nil {
		return err
	}
	if err := e.task(ctx, rec, TaskUpdateDeployment, false, func(ctx context.Context) error {
		return target.Apply(ctx, pipeline, stage.Name, deployments)
	}); err != nil {
		return err
	}
	err := e.task(ctx, rec, TaskVerifyDeployment, true, func(ctx context.Context) error {
		if err := e.verify(ctx, target, pipeline, stage, deployments); err != nil {
			return err
		}
		pruned, err := target.Prune(ctx, pipeline, stage.Name, objs, append(kindsOf(objs), pruneKinds...))
		if len(pruned) > 0 {
			e.log.Info("pruned objects no longer in the release", "stage", stage.Name, "objects", pruned)
		}
		return err
	})
	e.deploymentEvents(ctx, target, deployments, err)
	return err
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

// verify waits for every Deployment of the release to roll out, then runs the stage's
// health check.
func (e *run) verify(ctx context.Context, target *Cluster, pipeline string, stage *planner.Stage, deployments []*unstructured.Unstructured) error {
	start := time.Now()
	defer func() {
		e.r.metrics.verifyDuration.WithLabelValues(pipeline, stage.Name).Observe(time.Since(start).Seconds())
	}()
	timeout := stage.Verify.Rollout.Timeout.Duration
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	for _, dep := range deployments {
		if err := target.WaitRollout(ctx, dep.GetNamespace(), dep.GetName(), timeout); err != nil {
			return err
		}
	}
	if hc := stage.Verify.HealthCheck; hc != nil {
		check := HealthCheck{URL: hc.URL, Interval: hc.Interval.Duration, Successes: hc.Successes, Failures: hc.Failures, Timeout: hc.Timeout.Duration}
		if err := check.Run(ctx, e.r.opts.HTTPClient); err != nil {
			return err
		}
	}
	return nil
}
