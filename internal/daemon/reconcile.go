package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"ebb.dev/ebb/reconciler"
)

// A reconcile request (`ebb reconcile PIPELINE`, like `flux reconcile`) goes through the API
// server, not a private port: the CLI sets AnnotationReconcileRequestedAt on the pipeline's
// Pipeline object; the leader, which watches them, polls Git at once, hands the pipeline's
// target to the reconciler again (a new commit is planned and released, a stage at rest is
// checked for drift), and then copies the value to AnnotationReconcileHandledAt, which the CLI
// waits for.
const (
	AnnotationReconcileRequestedAt = "ebb.dev/reconcile-requested-at"
	AnnotationReconcileHandledAt   = "ebb.dev/reconcile-handled-at"
)

// reconcilePollWait bounds the wait for the Git poll a request triggers.
const reconcilePollWait = 30 * time.Second

// watchReconcileRequests handles reconcile requests on the Pipeline objects of the daemon's
// namespace until ctx ends, one at a time, in the order they are seen.
func (d *Daemon) watchReconcileRequests(ctx context.Context, sh *shard) {
	client, err := dynamic.NewForConfig(d.opts.Home)
	if err != nil {
		d.log.Error("no reconcile requests: client", "err", err)
		return
	}
	requests := make(chan *unstructured.Unstructured, 64)
	offer := func(obj any) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return
		}
		if pipeline, _, _ := unstructured.NestedString(u.Object, "spec", "pipeline"); !sh.ownsPipeline(pipeline) {
			return // another replica's
		}
		if pendingRequest(u) != "" {
			select {
			case requests <- u:
			default:
				d.log.Warn("reconcile requests pile up; this one waits for the next change", "pipeline", u.GetName())
			}
		}
	}
	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(client, 0, d.opts.Namespace, nil)
	informer := factory.ForResource(reconciler.PipelineResource).Informer()
	// The watch holds every Pipeline object: only what a request needs of each.
	_ = informer.SetTransform(func(obj any) (any, error) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return obj, nil
		}
		pipeline, _, _ := unstructured.NestedString(u.Object, "spec", "pipeline")
		kept := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"pipeline": pipeline}}}
		kept.SetAPIVersion(u.GetAPIVersion())
		kept.SetKind(u.GetKind())
		kept.SetName(u.GetName())
		kept.SetNamespace(u.GetNamespace())
		kept.SetResourceVersion(u.GetResourceVersion())
		kept.SetAnnotations(u.GetAnnotations())
		return kept, nil
	})
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    offer,
		UpdateFunc: func(_, obj any) { offer(obj) },
	}); err != nil {
		d.log.Error("no reconcile requests: watch", "err", err)
		return
	}
	factory.Start(ctx.Done())
	handled := map[string]string{} // object name -> the last request handled
	for {
		select {
		case <-ctx.Done():
			factory.Shutdown()
			return
		case u := <-requests:
			// Other writes to the object before the handled mark is seen offer it again.
			if req := pendingRequest(u); handled[u.GetName()] != req {
				d.handleReconcileRequest(ctx, client, sh, u)
				handled[u.GetName()] = req
			}
		}
	}
}

// pendingRequest is the object's reconcile request not handled yet, or "".
func pendingRequest(u *unstructured.Unstructured) string {
	a := u.GetAnnotations()
	if req := a[AnnotationReconcileRequestedAt]; req != "" && req != a[AnnotationReconcileHandledAt] {
		return req
	}
	return ""
}

// handleReconcileRequest polls Git now, waits for that poll (up to reconcilePollWait), offers
// the pipeline's current target to the reconciler, and records the request as handled.
func (d *Daemon) handleReconcileRequest(ctx context.Context, client dynamic.Interface, sh *shard, u *unstructured.Unstructured) {
	req := pendingRequest(u)
	pipeline, _, _ := unstructured.NestedString(u.Object, "spec", "pipeline")
	log := d.log.With("pipeline", pipeline, "requestedAt", req)
	log.Info("reconcile requested")

	before := d.source.Status().LastPoll
	d.source.Trigger()
	deadline := time.Now().Add(reconcilePollWait)
	for d.source.Status().LastPoll.Equal(before) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	if target := sh.target(pipeline); target != nil {
		sh.rec.Sync(ctx, []*reconciler.Target{target})
	} else {
		log.Info("reconcile requested for a pipeline with no target (not enabled, or in error)")
	}

	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{AnnotationReconcileHandledAt: req}}})
	_, err := client.Resource(reconciler.PipelineResource).Namespace(d.opts.Namespace).
		Patch(ctx, u.GetName(), types.MergePatchType, patch, metav1.PatchOptions{FieldManager: reconciler.FieldManager})
	if err != nil {
		log.Error("record the reconcile request as handled", "err", fmt.Errorf("patch pipeline %s: %w", u.GetName(), err))
		return
	}
	log.Info("reconcile request handled", "commit", d.source.Status().Commit)
}
