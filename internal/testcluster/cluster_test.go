package testcluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"ebb.dev/ebb/internal/proc"
)

// panicDirEnv, when set, makes the test binary a helper that starts a cluster in that
// directory and panics, for TestPanicLeavesNothingRunning.
const panicDirEnv = "EBB_TESTCLUSTER_PANIC_DIR"

var cluster *Cluster

func TestMain(m *testing.M) {
	if dir := os.Getenv(panicDirEnv); dir != "" {
		if _, err := Start(context.Background(), Options{Name: "doomed", Dir: dir}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		panic("a test panics while its cluster runs")
	}
	code := Main(m, Options{Name: "harness"}, &cluster)
	if cluster == nil {
		os.Exit(code)
	}
	// After the package's tests, no process they started may still run.
	if pids, err := proc.ProcessesUsing(cluster.Dir); err != nil || len(pids) > 0 {
		fmt.Fprintf(os.Stderr, "processes still running after the tests: %v (%v)\n", pids, err)
		code = 1
	}
	os.Exit(code)
}

func TestDeploymentRollsOut(t *testing.T) {
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	ns := namespace(t, cs, "rollout")
	ctx := context.Background()

	_, err := cs.AppsV1().Deployments(ns).Create(ctx, deployment("web", "registry.example/web:1.0", 3, 30), metav1.CreateOptions{})
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil && d.Status.ObservedGeneration == d.Generation &&
			d.Status.UpdatedReplicas == 3 && d.Status.ReadyReplicas == 3 && d.Status.AvailableReplicas == 3
	}, 30*time.Second, 50*time.Millisecond, "deployment did not become available")

	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	require.NoError(t, err)
	require.Len(t, pods.Items, 3)
	for _, p := range pods.Items {
		assert.Equal(t, corev1.PodRunning, p.Status.Phase, p.Name)
		assert.NotEmpty(t, p.Spec.NodeName, "%s was not scheduled", p.Name)
		assert.True(t, podReady(&p), "%s is not Ready", p.Name)
	}
}

func TestBrokenImageExceedsProgressDeadline(t *testing.T) {
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	ns := namespace(t, cs, "broken")
	ctx := context.Background()

	_, err := cs.AppsV1().Deployments(ns).Create(ctx, deployment("web", "registry.example/web:broken-1", 2, 3), metav1.CreateOptions{})
	require.NoError(t, err)

	var last string
	require.Eventually(t, func() bool {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range d.Status.Conditions {
			if c.Type == appsv1.DeploymentProgressing {
				last = c.Reason
				return c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded"
			}
		}
		return false
	}, 60*time.Second, 100*time.Millisecond, "no ProgressDeadlineExceeded; last Progressing reason %q", last)

	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	require.NoError(t, err)
	require.NotEmpty(t, pods.Items)
	for _, p := range pods.Items {
		assert.False(t, podReady(&p), "%s is Ready", p.Name)
		require.Len(t, p.Status.ContainerStatuses, 1, p.Name)
		st := p.Status.ContainerStatuses[0].State.Waiting
		require.NotNil(t, st, "%s is not waiting", p.Name)
		assert.Equal(t, "CrashLoopBackOff", st.Reason)
	}
}

// TestFailingImages: each failing image of the test cluster gives its pods the status a
// kubelet gives them: "broken" crash-loops, "broken-pull" cannot pull its image, "broken-oom"
// was OOM-killed.
func TestFailingImages(t *testing.T) {
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	ctx := context.Background()
	for _, tc := range []struct {
		image, waiting, lastTerminated string
		phase                          corev1.PodPhase
	}{
		{"registry.example/web:broken-2", "CrashLoopBackOff", "Error", corev1.PodRunning},
		{"registry.example/web:broken-pull", "ImagePullBackOff", "", corev1.PodPending},
		{"registry.example/web:broken-oom", "CrashLoopBackOff", "OOMKilled", corev1.PodRunning},
	} {
		t.Run(tc.image, func(t *testing.T) {
			ns := namespace(t, cs, "failing")
			_, err := cs.AppsV1().Deployments(ns).Create(ctx, deployment("web", tc.image, 1, 600), metav1.CreateOptions{})
			require.NoError(t, err)
			var last string
			require.Eventually(t, func() bool {
				pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
				if err != nil || len(pods.Items) != 1 || len(pods.Items[0].Status.ContainerStatuses) != 1 {
					return false
				}
				p := pods.Items[0]
				st := p.Status.ContainerStatuses[0]
				last = fmt.Sprintf("phase %s, status %+v", p.Status.Phase, st)
				if st.State.Waiting == nil || st.State.Waiting.Reason != tc.waiting || p.Status.Phase != tc.phase || podReady(&p) {
					return false
				}
				if tc.lastTerminated == "" {
					return st.LastTerminationState.Terminated == nil
				}
				return st.LastTerminationState.Terminated != nil && st.LastTerminationState.Terminated.Reason == tc.lastTerminated
			}, 30*time.Second, 100*time.Millisecond, "pod of %s: last %s", tc.image, last)
		})
	}
}

// TestTwoClustersAreIndependent starts "dev" and "prod" side by side in this process, checks
// that an object made in one is absent from the other, and that stopping them leaves no
// process running and no port listening.
func TestTwoClustersAreIndependent(t *testing.T) {
	ctx := context.Background()
	dev, err := Start(ctx, Options{Name: "dev"})
	require.NoError(t, err)
	defer dev.Stop()
	prod, err := Start(ctx, Options{Name: "prod"})
	require.NoError(t, err)
	defer prod.Stop()

	devCS := kubernetes.NewForConfigOrDie(dev.Config)
	prodCS := kubernetes.NewForConfigOrDie(prod.Config)
	_, err = devCS.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "only-in-dev"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = prodCS.CoreV1().Namespaces().Get(ctx, "only-in-dev", metav1.GetOptions{})
	require.Error(t, err, "prod sees dev's namespace")
	assert.NotEqual(t, dev.Config.Host, prod.Config.Host)

	// Each kubeconfig file reaches its own cluster.
	for _, c := range []*Cluster{dev, prod} {
		kubectl, err := Bin("kubectl")
		require.NoError(t, err)
		out, err := exec.Command(kubectl, "--kubeconfig", c.Kubeconfig, "get", "nodes", "-o", "name").CombinedOutput()
		require.NoError(t, err, string(out))
		assert.Contains(t, string(out), "node/kwok-node-0")
	}

	for _, c := range []*Cluster{dev, prod} {
		host := strings.TrimPrefix(c.Config.Host, "https://")
		dir := c.Dir
		start := time.Now()
		require.NoError(t, c.Stop())
		assert.Less(t, time.Since(start), 5*time.Second, "stopping %s took too long", c.Name)
		pids, err := proc.ProcessesUsing(dir)
		require.NoError(t, err)
		assert.Empty(t, pids, "processes of %s still running", c.Name)
		_, err = net.DialTimeout("tcp", host, time.Second)
		assert.Error(t, err, "%s's API server port %s still accepts connections", c.Name, host)
		_, err = os.Stat(dir)
		assert.True(t, os.IsNotExist(err), "%s's temporary directory was not removed", c.Name)
	}
}

// TestAPIServerRestart stops a running cluster's API server and starts it again: clients are
// refused meanwhile, and afterwards the same address serves the same objects, and the
// controllers and kwok, which kept running, roll out a new Deployment.
func TestAPIServerRestart(t *testing.T) {
	c := StartT(t, Options{Name: "restart"})
	cs := kubernetes.NewForConfigOrDie(c.Config)
	ctx := context.Background()
	ns := namespace(t, cs, "restart")
	_, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "before"}, Data: map[string]string{"k": "v"},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	host := strings.TrimPrefix(c.Config.Host, "https://")
	// The controller manager exits when the API server goes away while it is still starting:
	// stop the API server only once it works (it made a ReplicaSet for a Deployment).
	_, err = cs.AppsV1().Deployments(ns).Create(ctx, deployment("warm", "registry.example/web:1.0", 1, 30), metav1.CreateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		list, err := cs.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=warm"})
		return err == nil && len(list.Items) > 0
	}, 30*time.Second, 50*time.Millisecond, "the controller manager never made a ReplicaSet")

	require.NoError(t, c.StopAPIServer())
	_, err = net.DialTimeout("tcp", host, time.Second)
	require.Error(t, err, "the API server's port still accepts connections")
	_, err = cs.CoreV1().ConfigMaps(ns).Get(ctx, "before", metav1.GetOptions{})
	require.Error(t, err)
	require.Error(t, c.StopAPIServer(), "stopping a stopped API server")

	start, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	require.NoError(t, c.StartAPIServer(start))
	require.Error(t, c.StartAPIServer(start), "starting a running API server")
	assert.Equal(t, "https://"+host, c.Config.Host)
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "before", metav1.GetOptions{})
	require.NoError(t, err, "the object made before the restart is gone")
	assert.Equal(t, "v", cm.Data["k"])

	_, err = cs.AppsV1().Deployments(ns).Create(ctx, deployment("web", "registry.example/web:1.0", 2, 30), metav1.CreateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil && d.Status.ObservedGeneration == d.Generation && d.Status.ReadyReplicas == 2
	}, 60*time.Second, 100*time.Millisecond, "no rollout after the restart: the controllers or kwok did not reconnect")

	// Stop still ends everything, the restarted API server included.
	dir := c.Dir
	require.NoError(t, c.Stop())
	pids, err := proc.ProcessesUsing(dir)
	require.NoError(t, err)
	assert.Empty(t, pids, "processes still running after Stop")
}

// TestPanicLeavesNothingRunning runs this test binary as a helper that starts a cluster and
// panics before any cleanup; the parent-death signal must still end every process.
func TestPanicLeavesNothingRunning(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), panicDirEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "the helper should have panicked")
	require.Contains(t, string(out), "a test panics while its cluster runs", string(out))

	var pids []int
	require.Eventually(t, func() bool {
		pids, err = proc.ProcessesUsing(dir)
		return err == nil && len(pids) == 0
	}, 5*time.Second, 50*time.Millisecond, "processes outlived the panicking test: %v", pids)
}

// BenchmarkStart measures the time to start one cluster: API server ready and its node Ready.
// ns/op is that time; stopping is not counted.
func BenchmarkStart(b *testing.B) {
	for b.Loop() {
		c, err := Start(context.Background(), Options{Name: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := c.Stop(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

func namespace(t *testing.T, cs kubernetes.Interface, prefix string) string {
	t.Helper()
	ns, err := cs.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	return ns.Name
}

func deployment(name, image string, replicas, deadlineSeconds int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas:                ptr.To(replicas),
			ProgressDeadlineSeconds: ptr.To(deadlineSeconds),
			Selector:                &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: image}}},
			},
		},
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
