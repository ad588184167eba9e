package reconciler

import (
	"context"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
)

// Task names of the blue-green model, and of its rollback.
const (
	TaskDeployGreen    = "Deploy green"
	TaskVerifyGreen    = "Verify green"
	TaskSwitchTraffic  = "Switch traffic"
	TaskVerifyTraffic  = "Verify traffic"
	TaskRetireBlue     = "Retire blue"
	TaskRemoveGreen    = "Remove green"
	previewSuffix      = "-preview"
	releaseLabelLength = 10
)

// colors are the objects of one release in a blue-green stage: the release's own Deployment
// (<deployment>-<release>), the preview Service that selects only it, and the stage's Service
// pointed at it. Every other object of the release is shared by both colors.
type colors struct {
	release  string // the value of LabelRelease on the release's pods
	shared   []*unstructured.Unstructured
	green    *unstructured.Unstructured
	preview  *unstructured.Unstructured
	service  *unstructured.Unstructured
	others   []*unstructured.Unstructured // Deployments other than the service's, rolled as usual
	renderAs string                       // the rendered Deployment name, prefix of every color
}

// colorsOf splits a release for the blue-green model.
func colorsOf(d *Desired) (*colors, error) {
	resources, deployments := split(d.Objects.Decode())
	main := find(deployments, d.Deployment)
	if main == nil {
		return nil, stalled("the release has no Deployment %q", d.Deployment)
	}
	var svc *unstructured.Unstructured
	c := &colors{release: releaseID(d.Hash), renderAs: d.Deployment}
	for _, o := range resources {
		if o.GetKind() == "Service" && o.GetName() == d.Service {
			svc = o
			continue
		}
		c.shared = append(c.shared, o)
	}
	if svc == nil {
		return nil, stalled("the blue-green model needs a Service for Deployment %q (spec.service %q), and the release has none: add one to the manifests, or use model: rolling", d.Deployment, d.Service)
	}
	for _, o := range deployments {
		if o != main {
			c.others = append(c.others, o)
		}
	}
	c.green = main.DeepCopy()
	c.green.SetName(colorName(d.Deployment, c.release))
	addSelectorLabel(c.green, LabelRelease, c.release)
	c.preview = withServiceSelector(svc, svc.GetName()+previewSuffix, c.release)
	c.service = withServiceSelector(svc, svc.GetName(), c.release)
	return c, nil
}

// releaseID is a release's short name: the first characters of its content hash.
func releaseID(hash string) string {
	id := strings.TrimPrefix(hash, "sha256:")
	id = strings.ToLower(nonDNS.ReplaceAllString(strings.ToLower(id), ""))
	if len(id) > releaseLabelLength {
		id = id[:releaseLabelLength]
	}
	return id
}

func colorName(deployment, release string) string { return deployment + "-" + release }

// withServiceSelector copies svc under name, selecting only the pods of release.
func withServiceSelector(svc *unstructured.Unstructured, name, release string) *unstructured.Unstructured {
	s := svc.DeepCopy()
	s.SetName(name)
	_ = unstructured.SetNestedField(s.Object, release, "spec", "selector", LabelRelease)
	return s
}

// blueGreen is the blue-green model: Deploy green, Verify green (through the preview
// Service), an approval when the stage asks, Switch traffic, Verify traffic, Retire blue.
// The Service never selects pods that are not Ready: it moves only to a verified green, and
// back only to a blue that still runs.
type blueGreen struct{}

func (blueGreen) deploy(ctx context.Context, s *stageRun) error {
	c, err := colorsOf(s.d)
	if err != nil {
		return &taskError{task: TaskDeployGreen, err: err}
	}
	stage := s.stage()
	colors := append([]string{c.green.GetName()}, names(c.others)...)
	if err := s.task(ctx, s.rec, TaskDeployGreen, false, func(ctx context.Context) error {
		if err := s.createResources(ctx, c.shared); err != nil {
			return err
		}
		return s.apply(ctx, append([]*unstructured.Unstructured{c.green, c.preview}, c.others...))
	}); err != nil {
		return err
	}
	if err := s.task(ctx, s.rec, TaskVerifyGreen, true, func(ctx context.Context) error {
		// No traffic reaches green yet: metric thresholds wait for the switch.
		return s.verify(ctx, subject{at: atCanary, deployments: colors, objects: c.shared, service: c.preview.GetName()})
	}); err != nil {
		return err
	}
	if err := s.promote(ctx); err != nil {
		return err
	}
	if err := s.task(ctx, s.rec, TaskSwitchTraffic, false, func(ctx context.Context) error {
		return s.apply(ctx, []*unstructured.Unstructured{c.service})
	}); err != nil {
		return err
	}
	if err := s.task(ctx, s.rec, TaskVerifyTraffic, true, func(ctx context.Context) error {
		return s.verify(ctx, subject{at: atFull, deployments: colors, objects: c.shared, service: c.service.GetName(), live: true, switched: c.green.GetName()})
	}); err != nil {
		return err
	}
	err = s.task(ctx, s.rec, TaskRetireBlue, false, func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(stage.RetireAfter()):
		}
		if err := s.cluster.retireColors(ctx, stage.Namespace, c.renderAs, c.release); err != nil {
			return err
		}
		return s.prune(ctx, c.objects())
	})
	s.deploymentEvents(ctx, []*unstructured.Unstructured{c.green}, err)
	return err
}

// objects are every object of the release as applied in the blue-green model.
func (c *colors) objects() []*unstructured.Unstructured {
	return append(append([]*unstructured.Unstructured{c.green, c.preview, c.service}, c.shared...), c.others...)
}

// restore puts a blue-green stage back on its known-good release. When its color ("blue")
// still runs, that is a switch of the Service back to it, then the removal of every other
// color: no new pods, no downtime. Otherwise the known-good release is deployed again through
// the whole model.
func (blueGreen) restore(ctx context.Context, s *stageRun) error {
	blue, err := colorsOf(s.d)
	if err != nil {
		return &taskError{task: TaskSwitchTraffic, err: err}
	}
	ns := s.stage().Namespace
	running, err := s.cluster.deploymentReady(ctx, ns, blue.green.GetName())
	if err != nil {
		return &taskError{task: TaskSwitchTraffic, err: err}
	}
	if !running {
		s.log.Info("the known-good color is gone; deploying it again", "deployment", blue.green.GetName())
		return blueGreen{}.deploy(ctx, s)
	}
	if err := s.task(ctx, s.rec, TaskSwitchTraffic, false, func(ctx context.Context) error {
		// The shared objects too: the failed release may have changed a ConfigMap blue reads.
		if err := s.apply(ctx, append(append([]*unstructured.Unstructured(nil), blue.shared...), blue.service, blue.preview)); err != nil {
			return err
		}
		return s.cluster.forceStatefulSetRollback(ctx, blue.shared, rolloutTimeout(s))
	}); err != nil {
		return err
	}
	if err := s.task(ctx, s.rec, TaskVerifyTraffic, true, func(ctx context.Context) error {
		return s.verify(ctx, subject{at: atFull, deployments: []string{blue.green.GetName()}, objects: blue.shared,
			service: blue.service.GetName(), live: true, switched: blue.green.GetName()})
	}); err != nil {
		return err
	}
	err = s.task(ctx, s.rec, TaskRemoveGreen, false, func(ctx context.Context) error {
		if err := s.cluster.retireColors(ctx, ns, blue.renderAs, blue.release); err != nil {
			return err
		}
		return s.prune(ctx, blue.objects())
	})
	s.deploymentEvents(ctx, []*unstructured.Unstructured{blue.green}, err)
	return err
}

// discard removes the green color nobody approved; blue kept the traffic.
func (blueGreen) discard(ctx context.Context, s *stageRun) error {
	c, err := colorsOf(s.d)
	if err != nil {
		return err
	}
	return s.cluster.deleteDeployment(ctx, s.d.Namespace, c.green.GetName())
}

// retireColors deletes every color of deployment but keep's, and a Deployment left under the
// rendered name itself (the stage ran the rolling model before).
func (c *Cluster) retireColors(ctx context.Context, ns, deployment, keep string) error {
	list, err := c.Typed.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{LabelSelector: LabelRelease})
	if err != nil {
		return fmt.Errorf("list Deployments in %s of cluster %q: %w", ns, c.Name, err)
	}
	for _, d := range list.Items {
		if strings.HasPrefix(d.Name, deployment+"-") && d.Labels[LabelRelease] != keep {
			if err := c.deleteDeployment(ctx, ns, d.Name); err != nil {
				return err
			}
		}
	}
	if old, err := c.Typed.AppsV1().Deployments(ns).Get(ctx, deployment, metav1.GetOptions{}); err == nil && old.Labels[LabelPipeline] != "" {
		return c.deleteDeployment(ctx, ns, deployment)
	}
	return nil
}

// deploymentReady reports whether Deployment ns/name exists with every replica ready.
func (c *Cluster) deploymentReady(ctx context.Context, ns, name string) (bool, error) {
	d, err := c.Typed.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get Deployment %s/%s in cluster %q: %w", ns, name, c.Name, err)
	}
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	return d.DeletionTimestamp == nil && d.Status.ReadyReplicas >= want, nil
}

// waitEndpoints waits until Service ns/name's EndpointSlices list ready endpoints and every
// ready endpoint is a pod of Deployment deployment: traffic has moved.
func (c *Cluster) waitEndpoints(ctx context.Context, ns, service, deployment string, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	deadline := time.Now().Add(timeout)
	selector := labels.Set{"kubernetes.io/service-name": service}.String()
	var last string
	for {
		slices, err := c.Typed.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			last = err.Error()
		} else {
			ours, others := 0, 0
			for _, s := range slices.Items {
				for _, ep := range s.Endpoints {
					if ep.Conditions.Ready == nil || !*ep.Conditions.Ready {
						continue
					}
					if ep.TargetRef != nil && strings.HasPrefix(ep.TargetRef.Name, deployment+"-") {
						ours++
					} else {
						others++
					}
				}
			}
			if ours > 0 && others == 0 {
				return nil
			}
			last = fmt.Sprintf("%d ready endpoints of %s, %d of other pods", ours, deployment, others)
		}
		if time.Now().After(deadline) {
			return verificationFailed("traffic", "Service %s/%s did not move to %s within %s: %s", ns, service, deployment, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
