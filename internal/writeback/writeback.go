// Package writeback records a completed rollback in Git, for pipelines with spec.writeBack:
// a commit restores the failed pipeline's files (its pipeline file and the manifests
// directories of its stages) to their content at the known-good commit, and nothing else, so
// other pipelines' changes in the same commit stay. mode commit pushes it to the followed
// branch; mode branch pushes ebb/rollback/<pipeline>-<n> for review. When the followed branch
// changed those files since the failed commit, the commit cannot apply cleanly on the new
// head: it is pushed as that branch instead, and the execution says so.
//
// The commit carries the trailers Ebb-Execution and Ebb-Restores; the reconciler recognises
// it when it polls it (reconciler.Commit.WriteBack): the stage runs the release it restores,
// so nothing new runs and nothing loops.
//
// It follows the Execution records (the notifier's watch hands them over), not the
// reconciler: a parent execution that reached ROLLBACK_COMPLETED is written back once. The
// result is recorded on the execution (annotations writeback.ebb.dev/*, its comment) and as
// an Event. A failed write-back (read-only credentials, a protected branch) never undoes the
// rollback: it is reported there, and not tried again.
package writeback

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/workqueue"

	corev1 "k8s.io/api/core/v1"

	"ebb.dev/ebb/gitsource"
	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/planner"
	"ebb.dev/ebb/reconciler"
)

// Annotations of a parent execution that record its write-back.
const (
	// AnnotationResult is "written", "branch" (pushed for review, or instead of the followed
	// branch), "off" (the pipeline has no writeBack), "nothing" (Git already had the files)
	// or "failed".
	AnnotationResult = "writeback.ebb.dev/result"
	// AnnotationCommit is the SHA of the write-back commit.
	AnnotationCommit = "writeback.ebb.dev/commit"
	// AnnotationBranch is the branch it was pushed to.
	AnnotationBranch = "writeback.ebb.dev/branch"
)

// PipelineFunc returns pipeline name as defined at commit.
type PipelineFunc func(ctx context.Context, commit, name string) (*planner.Pipeline, error)

// Options configure a Writer.
type Options struct {
	// Remote is the followed repository, with the daemon's credentials.
	Remote gitsource.Remote
	// Branch is the followed branch; Path the directory of the repository the pipelines'
	// paths are relative to ("" for the root).
	Branch, Path string
	// Author signs the commits.
	Author config.Author
	// Pipeline reads a pipeline's definition at a commit.
	Pipeline PipelineFunc
	// Namespace holds the Execution records; Records and Events are clients of its cluster.
	Namespace string
	Records   dynamic.Interface
	Events    kubernetes.Interface
	// Logger receives the logs; default slog.Default().
	Logger *slog.Logger
}

// Writer writes rollbacks back to Git, one at a time.
type Writer struct {
	opts  Options
	log   *slog.Logger
	store *reconciler.Store
	queue workqueue.TypedRateLimitingInterface[string]
}

// New returns a Writer; Run starts it, Offer hands it executions.
func New(opts Options) *Writer {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Writer{
		opts: opts, log: opts.Logger.With("component", "writeback"),
		store: reconciler.NewStore(opts.Records, opts.Namespace),
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, time.Minute)),
	}
}

// Offer queues x when it is a parent execution whose rollback completed and that was not
// written back yet. It never blocks.
func (w *Writer) Offer(x *reconciler.Execution) {
	if x.Spec.Kind == reconciler.KindDeploy && x.Status.Phase == reconciler.RollbackCompleted && x.Annotations[AnnotationResult] == "" {
		w.queue.Add(x.Name)
	}
}

// Run writes back what is offered until ctx ends.
func (w *Writer) Run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		w.queue.ShutDown()
	}()
	for {
		name, quit := w.queue.Get()
		if quit {
			return
		}
		err := w.sync(ctx, name)
		switch {
		case err == nil || ctx.Err() != nil:
			w.queue.Forget(name)
		case w.queue.NumRequeues(name) < maxAttempts-1:
			w.log.Warn("write-back failed; trying again", "execution", name, "err", err)
			w.queue.AddRateLimited(name)
		default:
			w.queue.Forget(name)
			w.log.Error("write-back failed", "execution", name, "err", err)
		}
		w.queue.Done(name)
	}
}

// maxAttempts bounds the attempts of a write-back that fails for a reason that may pass (the
// Git server or the API server unreachable).
const maxAttempts = 5

// sync writes back the rollback of the parent execution name, and records the result.
func (w *Writer) sync(ctx context.Context, name string) error {
	x, err := w.store.GetExecution(ctx, name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if x.Spec.Kind != reconciler.KindDeploy || x.Status.Phase != reconciler.RollbackCompleted || x.Annotations[AnnotationResult] != "" {
		return nil
	}
	p, err := w.opts.Pipeline(ctx, x.Spec.Commit, x.Spec.Pipeline)
	if err != nil {
		return fmt.Errorf("read pipeline %q at commit %s: %w", x.Spec.Pipeline, short(x.Spec.Commit), err)
	}
	if p.Spec.WriteBack == nil {
		return w.annotate(ctx, x, map[string]string{AnnotationResult: "off"})
	}
	rb, err := w.store.GetExecution(ctx, x.Status.Rollback)
	if err != nil {
		return fmt.Errorf("read rollback execution of %s: %w", x.Spec.DisplayName, err)
	}
	good, err := w.opts.Pipeline(ctx, rb.Spec.Commit, x.Spec.Pipeline)
	if err != nil {
		return fmt.Errorf("read pipeline %q at the restored commit %s: %w", x.Spec.Pipeline, short(rb.Spec.Commit), err)
	}
	req := request{
		execution: x, rollback: rb, mode: p.Spec.WriteBack.Mode,
		paths: pipelinePaths(w.opts.Path, p, good),
	}
	res, err := w.write(ctx, req)
	if err != nil {
		var perm *permanentError
		if !errors.As(err, &perm) {
			return err
		}
		return w.report(ctx, x, map[string]string{AnnotationResult: "failed"}, corev1.EventTypeWarning, "WriteBackFailed",
			fmt.Sprintf("write-back to Git failed: %v; the rollback stands", perm.err))
	}
	ann := map[string]string{AnnotationResult: res.result, AnnotationCommit: res.commit, AnnotationBranch: res.branch}
	if res.result == "nothing" {
		delete(ann, AnnotationCommit)
	}
	return w.report(ctx, x, ann, corev1.EventTypeNormal, "WrittenBack", res.message)
}

// report records the outcome on the execution: its comment, an Event, and the annotations
// last, since they mark the write-back done.
func (w *Writer) report(ctx context.Context, x *reconciler.Execution, ann map[string]string, eventType, reason, message string) error {
	w.log.Info("write-back", "execution", x.Spec.DisplayName, "result", ann[AnnotationResult], "message", message)
	if err := w.comment(ctx, x.Name, message); err != nil {
		return err
	}
	w.event(ctx, x, eventType, reason, message)
	return w.annotate(ctx, x, ann)
}

// comment appends message to the execution's comment (a status write: the reconciler no
// longer writes an execution that ended).
func (w *Writer) comment(ctx context.Context, name, message string) error {
	for attempt := 0; ; attempt++ {
		x, err := w.store.GetExecution(ctx, name)
		if err != nil {
			return err
		}
		if strings.Contains(x.Status.Comment, message) {
			return nil
		}
		x.Status.Comment += "; " + message
		err = w.store.UpdateExecution(ctx, x)
		if err == nil || !apierrors.IsConflict(err) || attempt == 3 {
			return err
		}
	}
}

// annotate merges ann into the execution's annotations.
func (w *Writer) annotate(ctx context.Context, x *reconciler.Execution, ann map[string]string) error {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	_, err := w.opts.Records.Resource(reconciler.ExecutionResource).Namespace(w.opts.Namespace).
		Patch(ctx, x.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "ebb-writeback"})
	if err != nil {
		return fmt.Errorf("record the write-back on execution %s: %w", x.Spec.DisplayName, err)
	}
	return nil
}

// event records an Event on the execution; best effort.
func (w *Writer) event(ctx context.Context, x *reconciler.Execution, eventType, reason, message string) {
	if w.opts.Events == nil {
		return
	}
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: x.Name + ".", Namespace: w.opts.Namespace},
		InvolvedObject: corev1.ObjectReference{
			APIVersion: reconciler.Group + "/" + reconciler.Version, Kind: "Execution",
			Namespace: w.opts.Namespace, Name: x.Name, UID: x.UID,
		},
		Type: eventType, Reason: reason, Message: message,
		Source:         corev1.EventSource{Component: "ebb"},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}
	if _, err := w.opts.Events.CoreV1().Events(w.opts.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		w.log.Warn("record event", "execution", x.Spec.DisplayName, "err", err)
	}
}

// permanentError is a write-back that trying again would not help: the credentials may not
// push, the branch is protected, the history was rewritten.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}
