package reconciler

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/planner"
)

// TestPodFault: which pod states fail a release at once, and what the comment says.
func TestPodFault(t *testing.T) {
	now := time.Now()
	waiting := func(reason, message string, restarts int32) corev1.ContainerStatus {
		return corev1.ContainerStatus{Name: "app", RestartCount: restarts, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: message}}}
	}
	crashed := func(restarts int32, reason string, code int32) corev1.ContainerStatus {
		return corev1.ContainerStatus{Name: "app", RestartCount: restarts,
			State:                corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
			LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: reason, ExitCode: code}}}
	}
	unschedulable := func(since time.Duration) corev1.PodCondition {
		return corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
			Message: "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.", LastTransitionTime: metav1.NewTime(now.Add(-since))}
	}
	for _, tc := range []struct {
		name       string
		containers []corev1.ContainerStatus
		init       []corev1.ContainerStatus
		conditions []corev1.PodCondition
		want       string
	}{
		{name: "starting", containers: []corev1.ContainerStatus{waiting("ContainerCreating", "", 0)}},
		{name: "running", containers: []corev1.ContainerStatus{{Name: "app", Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}},
		{name: "image pull back-off", containers: []corev1.ContainerStatus{waiting("ImagePullBackOff", `Back-off pulling image "x:1"`, 0)},
			want: `pod web-1: container app ImagePullBackOff: Back-off pulling image "x:1"`},
		{name: "image pull error", containers: []corev1.ContainerStatus{waiting("ErrImagePull", "not found", 0)}, want: "pod web-1: container app ErrImagePull: not found"},
		{name: "invalid image name", containers: []corev1.ContainerStatus{waiting("InvalidImageName", "bad", 0)}, want: "pod web-1: container app InvalidImageName: bad"},
		{name: "config error", containers: []corev1.ContainerStatus{waiting("CreateContainerConfigError", `secret "db" not found`, 0)},
			want: `pod web-1: container app CreateContainerConfigError: secret "db" not found`},
		{name: "create error", containers: []corev1.ContainerStatus{waiting("CreateContainerError", "x", 0)}, want: "pod web-1: container app CreateContainerError: x"},
		{name: "run error", containers: []corev1.ContainerStatus{waiting("RunContainerError", "x", 0)}, want: "pod web-1: container app RunContainerError: x"},
		{name: "one transient restart is tolerated", containers: []corev1.ContainerStatus{crashed(1, "Error", 1)}},
		{name: "a second restart is not", containers: []corev1.ContainerStatus{crashed(2, "Error", 1)},
			want: "pod web-1: container app restarting: restarted 2 times, more than the 1 verify.pods.restarts allows; last terminated: Error (exit code 1)"},
		{name: "crash loop after the tolerated restart", containers: []corev1.ContainerStatus{waiting("CrashLoopBackOff", "back-off 10s restarting failed container", 1)},
			want: "pod web-1: container app CrashLoopBackOff: back-off 10s restarting failed container"},
		{name: "OOMKilled", containers: []corev1.ContainerStatus{crashed(1, "OOMKilled", 137)}, want: "pod web-1: container app OOMKilled: exit code 137, 1 restarts"},
		{name: "an init container counts", init: []corev1.ContainerStatus{waiting("ImagePullBackOff", "x", 0)}, want: "pod web-1: container app ImagePullBackOff: x"},
		{name: "unschedulable for a while", conditions: []corev1.PodCondition{unschedulable(10 * time.Second)}},
		{name: "unschedulable too long", conditions: []corev1.PodCondition{unschedulable(3 * time.Minute)},
			want: "pod web-1: Unschedulable for 3m0s (verify.pods.unschedulable 2m0s): 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1"},
				Status: corev1.PodStatus{ContainerStatuses: tc.containers, InitContainerStatuses: tc.init, Conditions: tc.conditions}}
			assert.Equal(t, tc.want, podFault(p, defaultPods(), now))
		})
	}
	t.Run("restarts 0 fails at the first restart", func(t *testing.T) {
		check := defaultPods()
		check.Restarts = 0
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1"}, Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{crashed(1, "Error", 1)}}}
		assert.Contains(t, podFault(p, check, now), "restarted 1 times, more than the 0")
	})
}

// TestFailFast: a release whose pods cannot run, for each reason the test cluster's pods give
// for real, is rolled back by fail-fast long before its Deployment's progress deadline (600s,
// Kubernetes' default) or the rollout timeout: the comment of the execution, of its rollback
// and the Event name the pod, the container and the reason.
func TestFailFast(t *testing.T) {
	f := newFixture(t, true)
	f.deadline = 600
	f.sync(f.commit("c1", "release 1.0", "1.0"))
	f.waitFor("web#1", Completed)
	for i, tc := range []struct{ tag, reason string }{
		{"2.0-broken", "CrashLoopBackOff: back-off restarting failed container"},
		{"3.0-broken-pull", `ImagePullBackOff: Back-off pulling image "registry.example/web:3.0-broken-pull"`},
		{"4.0-broken-oom", "OOMKilled: exit code 137, 1 restarts"},
	} {
		t.Run(tc.tag, func(t *testing.T) {
			n := i + 2
			f.sync(f.commit("c"+tc.tag, "release "+tc.tag, tc.tag))
			parent := f.waitFor(DisplayName("web", n), RollbackCompleted)
			rb := f.waitFor(RollbackDisplayName("web", "dev", i+1), Completed)
			for _, comment := range []string{parent.Status.Comment, rb.Status.Comment} {
				assert.Contains(t, comment, `task "Verify deployment" failed at commit `+short("c"+tc.tag)+": pods: Deployment "+f.ns+"/web: pod web-")
				assert.Contains(t, comment, "container web "+tc.reason)
			}
			assert.Equal(t, "registry.example/web:1.0", f.image())
			assert.True(t, hasEvent(t, f, "ReleaseFailed", "container web "+tc.reason), "no ReleaseFailed Event naming the reason")
		})
	}
	// Every gate's duration is recorded, with how it ended.
	recorded := map[string]bool{}
	ch := make(chan prometheus.Metric, 100)
	f.r.metrics.gateDuration.Collect(ch)
	close(ch)
	for m := range ch {
		var pb dto.Metric
		require.NoError(t, m.Write(&pb))
		labels := map[string]string{}
		for _, l := range pb.Label {
			labels[l.GetName()] = l.GetValue()
		}
		if pb.Histogram.GetSampleCount() > 0 {
			recorded[labels["gate"]+"="+labels["result"]] = true
		}
	}
	assert.True(t, recorded["pods=failed"], "gate durations recorded: %v", recorded)
	assert.True(t, recorded["rollout=passed"], "gate durations recorded: %v", recorded)
}

// TestFailFastUnschedulable: pods that no node can take fail the release once they waited
// verify.pods.unschedulable, with the scheduler's message.
func TestFailFastUnschedulable(t *testing.T) {
	f := newFixture(t, true)
	f.deadline = 600
	f.stage.Verify.Pods.Unschedulable = planner.Duration{Duration: time.Second}
	f.sync(f.commit("c1", "release 1.0", "1.0"))
	f.waitFor("web#1", Completed)
	f.podSpec = "nodeSelector: {ebb.dev/no-such-node: none},"
	f.sync(f.commit("c2", "release 2.0 on no node", "2.0"))
	parent := f.waitFor("web#2", RollbackCompleted)
	assert.Contains(t, parent.Status.Comment, "pods: Deployment "+f.ns+"/web: pod web-")
	assert.Contains(t, parent.Status.Comment, "Unschedulable for")
	assert.Contains(t, parent.Status.Comment, "didn't match Pod's node affinity/selector")
	f.waitFor("web_dev_rollback#1", Completed)
}

// TestFailFastOff: with verify.pods.failFast off, a crash-looping release fails only when
// its Deployment's progress deadline passes.
func TestFailFastOff(t *testing.T) {
	f := newFixture(t, true)
	f.stage.Verify.Pods.FailFast = false
	f.sync(f.commit("c1", "release 1.0", "1.0"))
	f.waitFor("web#1", Completed)
	f.sync(f.commit("c2", "release broken", "2.0-broken"))
	parent := f.waitFor("web#2", RollbackCompleted)
	assert.Contains(t, parent.Status.Comment, "rollout: Deployment "+f.ns+"/web: ProgressDeadlineExceeded")
	assert.NotContains(t, parent.Status.Comment, "pods:")
}

// TestStatefulSetNeverReady: a release whose StatefulSet never gets Ready fails verification
// with kstatus' reason, and is rolled back: the restore deletes the pod of the failed revision
// (a StatefulSet does not replace a broken pod by itself), so the known-good one runs again.
func TestStatefulSetNeverReady(t *testing.T) {
	f := newFixture(t, true)
	f.stage.Verify.Rollout.Timeout = planner.Duration{Duration: 5 * time.Second}
	statefulSet := func(image string) string {
		return `- apiVersion: apps/v1
  kind: StatefulSet
  metadata: {name: db, namespace: ` + f.ns + `}
  spec:
    serviceName: db
    replicas: 1
    selector: {matchLabels: {app: db}}
    template:
      metadata: {labels: {app: db}}
      spec: {containers: [{name: db, image: "` + image + `"}]}
`
	}
	f.extra = statefulSet("registry.example/db:1")
	f.sync(f.commit("c1", "release 1.0 with a database", "1.0"))
	x := f.waitFor("web#1", Completed)
	assert.Contains(t, x.Status.Stages[0].Tasks[2].Message, "objects ", "the verification lists the objects gate")

	f.extra = statefulSet("registry.example/db:2-broken")
	f.sync(f.commit("c2", "release 1.1 with a database that crash-loops", "1.1"))
	parent := f.waitFor("web#2", RollbackCompleted)
	assert.Contains(t, parent.Status.Comment, "pods: StatefulSet "+f.ns+"/db: pod db-0: container db CrashLoopBackOff", "fail-fast covers a StatefulSet's pods")
	f.waitFor("web_dev_rollback#1", Completed)

	// Without fail-fast, kstatus' reason fails it when the rollout timeout passes.
	f.stage.Verify.Pods.FailFast = false
	f.extra = statefulSet("registry.example/db:3-broken")
	f.sync(f.commit("c3", "release 1.2 with a database that never gets Ready", "1.2"))
	parent = f.waitFor("web#3", RollbackCompleted)
	assert.Contains(t, parent.Status.Comment, "objects: not ready within 5s: StatefulSet "+f.ns+"/db: InProgress: Ready: 0/1")
	f.waitFor("web_dev_rollback#2", Completed)
	sts, err := f.cs.AppsV1().StatefulSets(f.ns).Get(context.Background(), "db", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "registry.example/db:1", sts.Spec.Template.Spec.Containers[0].Image, "the known-good StatefulSet is back")
}

// hasEvent reports whether an Event with reason and a message containing text was recorded
// in the fixture's namespace.
func hasEvent(t *testing.T, f *fixture, reason, text string) bool {
	list, err := f.cs.CoreV1().Events(f.ns).List(context.Background(), metav1.ListOptions{FieldSelector: "reason=" + reason})
	require.NoError(t, err)
	for _, ev := range list.Items {
		if strings.Contains(ev.Message, text) {
			return true
		}
	}
	return false
}
