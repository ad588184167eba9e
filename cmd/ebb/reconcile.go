package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"ebb.dev/ebb/internal/daemon"
	"ebb.dev/ebb/reconciler"
)

func newReconcileCommand() *cobra.Command {
	var (
		rf      recordFlags
		noWait  bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "reconcile PIPELINE [--timeout 2m] [--no-wait]",
		Short: "Ask the daemon to poll Git and reconcile a pipeline now, and wait until it has",
		Long: `Ask the daemon to reconcile a pipeline now, as flux reconcile does: the request is an
annotation (` + daemon.AnnotationReconcileRequestedAt + `) on the pipeline's Pipeline object,
written through the API server with your own rights (patch on pipelines.ebb.dev). The leader
polls Git at once, plans and releases a new commit, or checks a stage at rest for drift, and
marks the request handled (` + daemon.AnnotationReconcileHandledAt + `), which this command
waits for.`,
		Example: `  ebb reconcile web
  ebb reconcile web -n ebb-system --timeout 5m`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return reconcile(cmd, &rf, args[0], !noWait, timeout)
		},
	}
	rf.add(cmd)
	cmd.ValidArgsFunction = completePipelines(&rf, true)
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "only make the request; do not wait for the daemon")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the daemon to handle the request")
	return cmd
}

// reconcile annotates the Pipeline object of pipeline with a request and, with wait, waits
// for the daemon to mark it handled.
func reconcile(cmd *cobra.Command, rf *recordFlags, pipeline string, wait bool, timeout time.Duration) error {
	ctx := cmd.Context()
	cfg, err := rf.restConfig()
	if err != nil {
		return err
	}
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	pipelines := client.Resource(reconciler.PipelineResource).Namespace(rf.namespace)
	name := reconciler.ObjectName(pipeline)
	requested := time.Now().UTC().Format(time.RFC3339Nano)
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{daemon.AnnotationReconcileRequestedAt: requested}}})
	_, err = pipelines.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("pipeline %q not found in namespace %s: `ebb pipelines -n %s` lists those the daemon found in Git", pipeline, rf.namespace, rf.namespace)
	}
	if err != nil {
		return fmt.Errorf("request a reconcile of pipeline %q: %w", pipeline, err)
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "asked the daemon to reconcile pipeline %s (%s=%s)\n", pipeline, daemon.AnnotationReconcileRequestedAt, requested)
	if !wait {
		return nil
	}
	var handled *reconciler.Pipeline
	err = pollUntil(ctx, timeout, func(ctx context.Context) (bool, error) {
		u, err := pipelines.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if u.GetAnnotations()[daemon.AnnotationReconcileHandledAt] != requested {
			return false, nil
		}
		handled = &reconciler.Pipeline{}
		return true, runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, handled)
	})
	if err != nil {
		return fmt.Errorf("the daemon did not handle the request within %s (is it running? `kubectl -n %s get leases` shows which replica holds each shard): %w", timeout, rf.namespace, err)
	}
	commit := "no commit yet"
	if c := handled.Status.LastPlannedCommit; c != nil {
		commit = "commit " + c.ShortSHA
	}
	state := ""
	if c := meta.FindStatusCondition(handled.Status.Conditions, reconciler.ConditionReady); c != nil {
		state = fmt.Sprintf(": Ready=%s %s", c.Status, c.Reason)
	}
	fmt.Fprintf(out, "reconciled pipeline %s at %s%s\n", pipeline, commit, state)
	return nil
}

// pollUntil calls done every 200ms until it returns true or an error, or timeout passes.
func pollUntil(ctx context.Context, timeout time.Duration, done func(context.Context) (bool, error)) error {
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, done)
}
