package reconciler

import (
	"context"
	"fmt"
	"time"

	"ebb.dev/ebb/planner"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// forceStatefulSetRollback does, for each StatefulSet of a restored release, what Kubernetes
// asks a person to do by hand ("forced rollback"): a StatefulSet whose pods of the failed
// revision never got Ready does not replace them after its template is reverted, so the
// restore deletes them, and the controller recreates them at the restored revision. Pods that
// are Ready, or already at the restored revision, are left alone.
func (c *Cluster) forceStatefulSetRollback(ctx context.Context, objs []*unstructured.Unstructured, timeout time.Duration) error {
	for _, o := range objs {
		if o.GetKind() != "StatefulSet" || o.GroupVersionKind().Group != "apps" {
			continue
		}
		if err := c.replaceBrokenPods(ctx, o.GetNamespace(), o.GetName(), timeout); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) replaceBrokenPods(ctx context.Context, ns, name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var sts *appsv1.StatefulSet
	for {
		var err error
		sts, err = c.Typed.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get StatefulSet %s/%s in cluster %q: %w", ns, name, c.Name, err)
		}
		if sts.Status.ObservedGeneration >= sts.Generation && sts.Status.UpdateRevision != "" {
			break // the controller knows the restored revision
		}
		if time.Now().After(deadline) {
			return nil // the rollout check says what the controller does not do
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	selector := metav1.FormatLabelSelector(sts.Spec.Selector)
	pods, err := c.Typed.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return fmt.Errorf("list the pods of StatefulSet %s/%s in cluster %q: %w", ns, name, c.Name, err)
	}
	for _, p := range pods.Items {
		if !metav1.IsControlledBy(&p, sts) || p.Labels[appsv1.ControllerRevisionHashLabelKey] == sts.Status.UpdateRevision || podIsReady(&p) || p.DeletionTimestamp != nil {
			continue
		}
		err := c.Typed.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{})
		if apierrors.IsForbidden(err) {
			return nil // without the right to, the rollout check reports the pod that stays
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete pod %s/%s of the failed revision of StatefulSet %s in cluster %q: %w", ns, p.Name, name, c.Name, err)
		}
	}
	return nil
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// statefulSetPodFault returns a *VerificationError when a pod of the update revision of one
// of the StatefulSets among objs cannot run (see podFault).
func (c *Cluster) statefulSetPodFault(ctx context.Context, objs []*unstructured.Unstructured, check planner.PodsCheck) error {
	for _, o := range objs {
		if o.GetKind() != "StatefulSet" || o.GroupVersionKind().Group != "apps" {
			continue
		}
		ns, name := o.GetNamespace(), o.GetName()
		sts, err := c.Typed.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return fmt.Errorf("get StatefulSet %s/%s in cluster %q: %w", ns, name, c.Name, err)
		}
		if sts.Status.ObservedGeneration < sts.Generation || sts.Status.UpdateRevision == "" {
			continue // the controller has not seen this release's template yet
		}
		pods, err := c.Typed.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(sts.Spec.Selector)})
		if err != nil {
			return fmt.Errorf("list the pods of StatefulSet %s/%s in cluster %q: %w", ns, name, c.Name, err)
		}
		now := time.Now()
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.Labels[appsv1.ControllerRevisionHashLabelKey] != sts.Status.UpdateRevision {
				continue
			}
			if why := podFault(p, check, now); why != "" {
				return verificationFailed("pods", "StatefulSet %s/%s: %s", ns, name, why)
			}
		}
	}
	return nil
}
