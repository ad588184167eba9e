package reconciler

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	appslisters "k8s.io/client-go/listers/apps/v1"
	"k8s.io/client-go/tools/cache"

	"ebb.dev/ebb/planner"
)

// podsGate is fail-fast verification: while the release is verified, it watches the pods of
// each Deployment's new ReplicaSet and fails the release as soon as one of them cannot run
// (podFault), naming the pod, the container, the reason and the message. A crash-looping
// release is rolled back seconds after its pods say so, not when the rollout's deadline
// passes. It is a guard: it runs beside the other gates until they pass.
type podsGate struct{}

func (podsGate) name() string { return "pods" }
func (podsGate) watches()     {}

func (podsGate) applies(_ *stageRun, sub subject) bool {
	return sub.at != atPromote && len(sub.deployments) > 0
}

func (podsGate) check(ctx context.Context, s *stageRun, sub subject) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	for _, name := range sub.deployments {
		go func() {
			applied, generation := s.appliedDeployment(name)
			if err := s.cluster.watchNewPods(ctx, s.stage().Namespace, name, applied, generation, s.stage().Verify.Pods); err != nil {
				cancel(err)
			}
		}()
	}
	<-ctx.Done()
	if err := context.Cause(ctx); err != context.Canceled {
		return err
	}
	return nil
}

// podRecheck is how often the pods are looked at again without an event: a pod waiting for a
// node fails only after verify.pods.unschedulable.
const podRecheck = time.Second

// watchNewPods watches the pods of Deployment ns/name's newest ReplicaSet until ctx ends, and
// returns a *VerificationError as soon as one cannot run. It returns nil when ctx ends; an
// error of the cluster when it cannot watch. applied and generation are the Deployment as
// this release applied it and its generation then (its selector cannot change); without
// them it is read from the API server.
func (c *Cluster) watchNewPods(ctx context.Context, ns, name string, applied *unstructured.Unstructured, generation int64, check planner.PodsCheck) error {
	w, scope, err := c.watchDeployments(ctx, ns)
	if err != nil {
		return err
	}
	defer c.release(scope, w)
	var sel *metav1.LabelSelector
	if applied != nil && generation != 0 {
		sel, err = appliedSelector(applied)
		if err != nil {
			return nil // the API server validates selectors; nothing to watch without one
		}
	} else {
		d, err := c.Typed.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		generation, sel = d.Generation, d.Spec.Selector
	}
	selector, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || selector.Empty() {
		return nil // the API server validates selectors; nothing to watch without one
	}
	factory := informers.NewSharedInformerFactoryWithOptions(c.Typed, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector.String() }),
		informers.WithTransform(verifiedFields))
	pods, sets := factory.Core().V1().Pods(), factory.Apps().V1().ReplicaSets()
	changed := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{AddFunc: poke, UpdateFunc: func(_, n any) { poke(n) }, DeleteFunc: poke}
	_, _ = pods.Informer().AddEventHandler(handler)
	_, _ = sets.Informer().AddEventHandler(handler)
	// The watches' lists and watch requests carry ctx's values: a verification's are urgent
	// (ratelimit.Urgent), and its crash-looping pods are seen without waiting behind deploys.
	watchCtx, stop := context.WithCancel(ctx)
	defer stop()
	factory.StartWithContext(watchCtx)
	if !cache.WaitForCacheSync(ctx.Done(), pods.Informer().HasSynced, sets.Informer().HasSynced, w.synced) {
		return nil // ctx ended
	}
	tick := time.NewTicker(podRecheck)
	defer tick.Stop()
	for {
		deployChanged := w.next()
		if d, err := w.lister.Deployments(ns).Get(name); err == nil {
			if hash := newReplicaSetHash(d, generation, sets.Lister()); hash != "" {
				list, _ := pods.Lister().Pods(ns).List(labels.SelectorFromSet(labels.Set{appsv1.DefaultDeploymentUniqueLabelKey: hash}))
				now := time.Now()
				for _, p := range list {
					if why := podFault(p, check, now); why != "" {
						return verificationFailed("pods", "Deployment %s/%s: %s", ns, name, why)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-deployChanged:
		case <-tick.C:
		}
	}
}

// appliedSelector returns the selector of a Deployment as ebb applied it.
func appliedSelector(d *unstructured.Unstructured) (*metav1.LabelSelector, error) {
	m, found, err := unstructured.NestedMap(d.Object, "spec", "selector")
	if err != nil || !found {
		return nil, fmt.Errorf("Deployment %s has no selector", d.GetName())
	}
	sel := &metav1.LabelSelector{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, sel); err != nil {
		return nil, err
	}
	return sel, nil
}

// revisionAnnotation is where the Deployment controller numbers a Deployment's template and
// the ReplicaSet that runs it.
const revisionAnnotation = "deployment.kubernetes.io/revision"

// newReplicaSetHash returns the pod-template-hash of the ReplicaSet that runs Deployment d's
// template of generation at least generation, or "" while the controller has not made it
// (or the watch has not seen it) yet. Until then the pods of an older ReplicaSet, such as the
// failed release a rollback replaces, are not this release's.
func newReplicaSetHash(d *appsv1.Deployment, generation int64, sets appslisters.ReplicaSetLister) string {
	if d.Generation < generation || d.Status.ObservedGeneration < d.Generation {
		return ""
	}
	rev := d.Annotations[revisionAnnotation]
	if rev == "" {
		return ""
	}
	list, _ := sets.ReplicaSets(d.Namespace).List(labels.Everything())
	for _, rs := range list {
		if metav1.IsControlledBy(rs, d) && rs.Annotations[revisionAnnotation] == rev {
			return rs.Labels[appsv1.DefaultDeploymentUniqueLabelKey]
		}
	}
	return ""
}

// podFault returns why pod p cannot run, or "" while it may still: a container waiting for a
// reason it does not recover from by itself, OOM-killed, restarting more than check.Restarts
// times (or crash-looping once it restarted that many), or the pod waiting for a node longer
// than check.Unschedulable.
func podFault(p *corev1.Pod, check planner.PodsCheck, now time.Time) string {
	if p.DeletionTimestamp != nil {
		return ""
	}
	statuses := append(append([]corev1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
	for _, cs := range statuses {
		for _, t := range []*corev1.ContainerStateTerminated{cs.State.Terminated, cs.LastTerminationState.Terminated} {
			if t != nil && t.Reason == "OOMKilled" {
				return containerFault(p, cs.Name, "OOMKilled", joinNonEmpty(t.Message, fmt.Sprintf("exit code %d, %d restarts", t.ExitCode, cs.RestartCount)))
			}
		}
		if w := cs.State.Waiting; w != nil {
			switch w.Reason {
			case "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
				"CreateContainerConfigError", "CreateContainerError", "RunContainerError":
				return containerFault(p, cs.Name, w.Reason, w.Message)
			case "CrashLoopBackOff":
				if int(cs.RestartCount) >= check.Restarts {
					return containerFault(p, cs.Name, w.Reason, joinNonEmpty(w.Message, lastTermination(cs)))
				}
			}
		}
		if int(cs.RestartCount) > check.Restarts {
			return containerFault(p, cs.Name, "restarting", joinNonEmpty(fmt.Sprintf("restarted %d times, more than the %d verify.pods.restarts allows", cs.RestartCount, check.Restarts), lastTermination(cs)))
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			if waited := now.Sub(c.LastTransitionTime.Time); waited >= check.Unschedulable.Duration {
				return fmt.Sprintf("pod %s: Unschedulable for %s (verify.pods.unschedulable %s): %s", p.Name, waited.Round(time.Second), check.Unschedulable.Duration, c.Message)
			}
		}
	}
	return ""
}

func containerFault(p *corev1.Pod, container, reason, message string) string {
	s := fmt.Sprintf("pod %s: container %s %s", p.Name, container, reason)
	if message = strings.TrimSpace(message); message != "" {
		s += ": " + message
	}
	return s
}

// lastTermination says how a container's previous run ended, e.g. "last terminated: Error
// (exit code 1)".
func lastTermination(cs corev1.ContainerStatus) string {
	t := cs.LastTerminationState.Terminated
	if t == nil {
		return ""
	}
	s := fmt.Sprintf("last terminated: %s (exit code %d)", t.Reason, t.ExitCode)
	if m := strings.TrimSpace(t.Message); m != "" {
		s += ": " + m
	}
	return s
}

func joinNonEmpty(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}
