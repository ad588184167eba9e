package reconciler

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"ebb.dev/ebb/internal/testprom"
	"ebb.dev/ebb/planner"
)

// healthServer answers /health/<service> with 500 when the pods that Service selects run an
// image containing "unhealthy", or two or more run one containing "fragile", and 200
// otherwise: a health check that fails for one release only, through whichever Service it is
// asked about.
func healthServer(t *testing.T, f *fixture) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		service := strings.TrimPrefix(r.URL.Path, "/health/")
		ctx := r.Context()
		svc, err := f.cs.CoreV1().Services(f.ns).Get(ctx, service, metav1.GetOptions{})
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		sel := metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: svc.Spec.Selector})
		pods, err := f.cs.CoreV1().Pods(f.ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fragile := 0
		for _, p := range pods.Items {
			image := p.Spec.Containers[0].Image
			if strings.Contains(image, "unhealthy") {
				http.Error(w, "unhealthy", http.StatusInternalServerError)
				return
			}
			if strings.Contains(image, "fragile") && p.DeletionTimestamp == nil {
				fragile++
			}
		}
		if fragile >= 2 {
			http.Error(w, "fragile at scale", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// endpointWatch follows the EndpointSlices of Service web and remembers whether, after it
// first had ready endpoints, it ever had none.
type endpointWatch struct {
	mu       sync.Mutex
	slices   map[string]*discoveryv1.EndpointSlice
	everUp   bool
	gaps     int
	maxReady int
}

func watchEndpoints(t *testing.T, f *fixture) *endpointWatch {
	w, err := f.cs.DiscoveryV1().EndpointSlices(f.ns).Watch(context.Background(), metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=web"})
	require.NoError(t, err)
	ew := &endpointWatch{slices: map[string]*discoveryv1.EndpointSlice{}}
	go func() {
		for ev := range w.ResultChan() {
			s, ok := ev.Object.(*discoveryv1.EndpointSlice)
			if !ok {
				continue
			}
			ew.mu.Lock()
			if ev.Type == watch.Deleted {
				delete(ew.slices, s.Name)
			} else {
				ew.slices[s.Name] = s
			}
			ready := 0
			for _, sl := range ew.slices {
				for _, ep := range sl.Endpoints {
					if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
						ready++
					}
				}
			}
			if ready > 0 {
				ew.everUp = true
				ew.maxReady = max(ew.maxReady, ready)
			} else if ew.everUp {
				ew.gaps++
			}
			ew.mu.Unlock()
		}
	}()
	t.Cleanup(w.Stop)
	return ew
}

func (w *endpointWatch) check(t *testing.T) {
	w.mu.Lock()
	defer w.mu.Unlock()
	assert.True(t, w.everUp, "the Service never had ready endpoints")
	assert.Zero(t, w.gaps, "the Service selected zero Ready pods %d times", w.gaps)
}

func (f *fixture) deployments() map[string]string {
	list, err := f.cs.AppsV1().Deployments(f.ns).List(context.Background(), metav1.ListOptions{})
	require.NoError(f.t, err)
	out := map[string]string{}
	for _, d := range list.Items {
		if d.DeletionTimestamp == nil {
			out[d.Name] = d.Spec.Template.Spec.Containers[0].Image
		}
	}
	return out
}

func (f *fixture) serviceRelease() string {
	svc, err := f.cs.CoreV1().Services(f.ns).Get(context.Background(), "web", metav1.GetOptions{})
	require.NoError(f.t, err)
	return svc.Spec.Selector[LabelRelease]
}

func TestBlueGreen(t *testing.T) {
	f := newFixture(t, true)
	health := healthServer(t, f)
	f.stage.Model = planner.ModelBlueGreen
	f.stage.BlueGreen = &planner.BlueGreen{RetireAfter: planner.Duration{Duration: 300 * time.Millisecond}}
	f.stage.Verify.HealthCheck = &planner.HealthCheck{URL: health.URL + "/health/{service}", Interval: planner.Duration{Duration: 50 * time.Millisecond},
		Successes: 2, Failures: 2, Timeout: planner.Duration{Duration: 10 * time.Second}}

	t1 := f.commit("c1", "release 1.0", "1.0")
	f.sync(t1)
	x := f.waitFor("web#1", Completed)
	blue := colorName("web", releaseID(t1.Stages[0].Hash))
	assert.Equal(t, map[string]string{blue: "registry.example/web:1.0"}, f.deployments())
	assert.Equal(t, releaseID(t1.Stages[0].Hash), f.serviceRelease())
	var tasks []string
	for _, task := range x.Status.Stages[0].Tasks {
		tasks = append(tasks, task.Name+"="+string(task.Status))
	}
	assert.Equal(t, []string{"Deploy green=COMPLETED", "Verify green=COMPLETED", "Switch traffic=COMPLETED", "Verify traffic=COMPLETED", "Retire blue=COMPLETED"}, tasks)
	f.settle()
	endpoints := watchEndpoints(t, f)

	t.Run("a second release replaces the first", func(t *testing.T) {
		t2 := f.commit("c2", "release 1.1", "1.1")
		f.sync(t2)
		f.waitFor("web#2", Completed)
		assert.Equal(t, map[string]string{colorName("web", releaseID(t2.Stages[0].Hash)): "registry.example/web:1.1"}, f.deployments())
		blue = colorName("web", releaseID(t2.Stages[0].Hash))
	})
	t.Run("fails before the switch: green is removed, blue untouched", func(t *testing.T) {
		f.sync(f.commit("c3", "release 2.0", "2.0-unhealthy"))
		x := f.waitFor("web#3", RollbackCompleted)
		assert.Contains(t, x.Status.Comment, `task "Verify green" failed`)
		f.waitFor("web_dev_rollback#1", Completed)
		assert.Equal(t, map[string]string{blue: "registry.example/web:1.1"}, f.deployments())
	})
	t.Run("green crash-loops: removed before the switch, blue keeps serving", func(t *testing.T) {
		f.sync(f.commit("c3b", "release 2.5", "2.5-broken"))
		x := f.waitFor("web#4", RollbackCompleted)
		assert.Contains(t, x.Status.Comment, `task "Verify green" failed`)
		assert.Contains(t, x.Status.Comment, "container web CrashLoopBackOff")
		f.waitFor("web_dev_rollback#2", Completed)
		assert.Equal(t, map[string]string{blue: "registry.example/web:1.1"}, f.deployments())
		assert.Equal(t, strings.TrimPrefix(blue, "web-"), f.serviceRelease(), "the Service never left blue")
	})
	t.Run("fails after the switch: the selector moves back to blue", func(t *testing.T) {
		// The preview passes (only /health/web-preview is asked before the switch); the main
		// Service fails once it selects green's pods.
		f.stage.Verify.HealthCheck.URL = health.URL + "/health/web"
		f.stage.BlueGreen.RetireAfter = planner.Duration{Duration: time.Minute}
		f.sync(f.commit("c4", "release 3.0", "3.0-unhealthy"))
		x := f.waitFor("web#5", RollbackCompleted)
		assert.Contains(t, x.Status.Comment, `task "Verify traffic" failed`)
		rb := f.waitFor("web_dev_rollback#3", Completed)
		var tasks []string
		for _, task := range rb.Status.Stages[0].Tasks {
			tasks = append(tasks, task.Name)
		}
		assert.Equal(t, []string{TaskSwitchTraffic, TaskVerifyTraffic, TaskRemoveGreen}, tasks)
		assert.Equal(t, map[string]string{blue: "registry.example/web:1.1"}, f.deployments())
		assert.Equal(t, strings.TrimPrefix(blue, "web-"), f.serviceRelease())
	})
	endpoints.check(t)
}

func TestPhasedRollout(t *testing.T) {
	f := newFixture(t, true)
	health := healthServer(t, f)
	f.stage.Phases = []planner.Phase{{Replicas: 1}}
	f.stage.Verify.HealthCheck = &planner.HealthCheck{URL: health.URL + "/health/web", Interval: planner.Duration{Duration: 50 * time.Millisecond},
		Successes: 2, Failures: 2, Timeout: planner.Duration{Duration: 10 * time.Second}}

	f.sync(f.commit("c1", "release 1.0", "1.0"))
	x := f.waitFor("web#1", Completed)
	var tasks []string
	for _, task := range x.Status.Stages[0].Tasks {
		tasks = append(tasks, task.Name)
	}
	assert.Equal(t, []string{TaskDeployPhase1, TaskVerifyPhase1, TaskDeployRolloutPhase, TaskFinishRolloutPhase, TaskVerifyRolloutPhase}, tasks)
	assert.Equal(t, map[string]string{"web": "registry.example/web:1.0"}, f.deployments())

	t.Run("fails at phase 1", func(t *testing.T) {
		f.sync(f.commit("c2", "release 2.0", "2.0-broken"))
		x := f.waitFor("web#2", RollbackCompleted)
		assert.Contains(t, x.Status.Comment, `task "Verify phase 1" failed`)
		f.waitFor("web_dev_rollback#1", Completed)
		assert.Equal(t, map[string]string{"web": "registry.example/web:1.0"}, f.deployments(), "phase 1 removed")
	})
	t.Run("fails at the rollout phase", func(t *testing.T) {
		// A "fragile" release is healthy on one pod and fails once two or more serve: phase 1
		// passes, the full rollout does not.
		f.sync(f.commit("c3", "release 3.0", "3.0-fragile"))
		x := f.waitFor("web#3", RollbackCompleted)
		assert.Contains(t, x.Status.Comment, `task "Verify rollout phase" failed`)
		var passed []string
		for _, task := range x.Status.Stages[0].Tasks {
			if task.Status == Completed {
				passed = append(passed, task.Name)
			}
		}
		assert.Equal(t, []string{TaskDeployPhase1, TaskVerifyPhase1, TaskDeployRolloutPhase, TaskFinishRolloutPhase}, passed)
		f.waitFor("web_dev_rollback#2", Completed)
		assert.Equal(t, map[string]string{"web": "registry.example/web:1.0"}, f.deployments())
	})
}

func TestApprovals(t *testing.T) {
	f := newFixture(t, true)
	f.stage.Approval = &planner.Approval{Approvers: []string{"alice", "group:release-managers"}, Timeout: planner.Duration{Duration: time.Minute}}
	ctx := context.Background()

	decide := func(display string, approved bool, by string) {
		t.Helper()
		var a *Approval
		require.Eventually(t, func() bool {
			var err error
			a, err = f.r.Store().GetApproval(ctx, ObjectName(ObjectName(display)+"-dev"))
			return err == nil
		}, 30*time.Second, 20*time.Millisecond)
		assert.Equal(t, []string{"alice", "group:release-managers"}, a.Spec.Approvers)
		assert.True(t, a.Spec.ExpiresAt.After(time.Now()))
		_, err := f.r.Store().Decide(ctx, a.Name, approved, by, "looked at it")
		require.NoError(t, err)
	}

	t.Run("approve", func(t *testing.T) {
		f.sync(f.commit("c1", "release 1.0", "1.0"))
		x := f.waitFor("web#1", Waiting)
		assert.Contains(t, x.Status.Comment, "waits for approval by alice, group:release-managers")
		_, err := f.cs.AppsV1().Deployments(f.ns).Get(ctx, "web", metav1.GetOptions{})
		assert.True(t, apierrors.IsNotFound(err), "nothing is applied before the approval")
		decide("web#1", true, "alice")
		f.waitFor("web#1", Completed)
		assert.Equal(t, "registry.example/web:1.0", f.image())
	})
	t.Run("reject before any change: FAILED, nothing applied", func(t *testing.T) {
		f.sync(f.commit("c2", "release 2.0", "2.0"))
		f.waitFor("web#2", Waiting)
		decide("web#2", false, "alice")
		x := f.waitFor("web#2", Failed)
		assert.Contains(t, x.Status.Comment, "rejected by alice: looked at it")
		assert.Contains(t, x.Status.Comment, "nothing was applied")
		assert.Equal(t, "registry.example/web:1.0", f.image())
		f.settle()
		assert.Len(t, f.executions(), 2, "no rollback, and the rejected release is not asked again")
	})
	t.Run("reject after the first phase: rolls back", func(t *testing.T) {
		f.stage.Phases = []planner.Phase{{Replicas: 1}}
		f.sync(f.commit("c3", "release 3.0", "3.0"))
		f.waitFor("web#3", Waiting)
		assert.Contains(t, f.deployments(), "web-phase1", "phase 1 runs before the approval")
		decide("web#3", false, "alice")
		x := f.waitFor("web#3", RollbackCompleted)
		assert.Contains(t, x.Status.Comment, "rejected by alice")
		f.waitFor("web_dev_rollback#1", Completed)
		assert.Equal(t, map[string]string{"web": "registry.example/web:1.0"}, f.deployments())
	})
	t.Run("expire", func(t *testing.T) {
		f.stage.Approval.Timeout = planner.Duration{Duration: 2 * time.Second}
		f.sync(f.commit("c4", "release 4.0", "4.0"))
		x := f.waitFor("web#4", Canceled)
		assert.Contains(t, x.Status.Comment, "the approval expired")
		assert.Equal(t, map[string]string{"web": "registry.example/web:1.0"}, f.deployments(), "the unapproved phase 1 is removed")
		f.sync(f.targets["c4"]) // a resync does not ask again
		f.settle()
		assert.Len(t, f.executions(), 5)
	})
}

// imageErrorRateExporter serves ebb_test_http_error_rate: 0.4 while any pod of the fixture's
// namespace runs an image containing "leaky", else 0.01. Prometheus scrapes it like an
// application's own metrics.
func imageErrorRateExporter(t *testing.T, f *fixture) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ebb_test_http_error_rate", Help: "Errors per request of the deployed app."},
		func() float64 {
			pods, err := f.cs.CoreV1().Pods(f.ns).List(context.Background(), metav1.ListOptions{})
			if err != nil {
				return math.NaN()
			}
			for _, p := range pods.Items {
				if strings.Contains(p.Spec.Containers[0].Image, "leaky") && p.DeletionTimestamp == nil {
					return 0.4
				}
			}
			return 0.01
		}))
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TestMetricOverThresholdRollsBack: a real Prometheus scrapes an exporter whose error rate
// depends on the deployed image; the new release's rate is over max, so the stage rolls back
// and both records give the value and the query.
func TestMetricOverThresholdRollsBack(t *testing.T) {
	f := newFixture(t, true)
	prom := testprom.StartT(t, testprom.Options{Targets: []string{imageErrorRateExporter(t, f)}, ScrapeInterval: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, prom.WaitForSamples(ctx, "ebb_test_http_error_rate", 1), prom.LogTail(20))
	query := `max(ebb_test_http_error_rate)`
	f.stage.Verify.Metrics = &planner.MetricsCheck{Prometheus: prom.URL, Query: query, Max: bound(0.05),
		Interval: planner.Duration{Duration: 250 * time.Millisecond}, For: planner.Duration{Duration: 2 * time.Second}}

	f.sync(f.commit("c1", "release 1.0", "1.0"))
	f.waitFor("web#1", Completed)

	f.sync(f.commit("c2", "release 2.0", "2.0-leaky"))
	x := f.waitFor("web#2", RollbackCompleted)
	rb := f.waitFor("web_dev_rollback#1", Completed)
	for _, comment := range []string{x.Status.Comment, rb.Status.Comment} {
		assert.Contains(t, comment, "metrics: ")
		assert.Contains(t, comment, "0.4")
		assert.Contains(t, comment, query)
	}
	assert.Equal(t, "registry.example/web:1.0", f.image())
}

// BenchmarkBlueGreenSwitchBack measures, after the switch, the time from the failing health
// check (the moment the health server answers the failing request) to the Service's selector
// being back on blue.
func BenchmarkBlueGreenSwitchBack(b *testing.B) {
	f := newFixture(b, true)
	var mu sync.Mutex
	var failedAt time.Time
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		svc, err := f.cs.CoreV1().Services(f.ns).Get(r.Context(), "web", metav1.GetOptions{})
		if err == nil && f.badHash != "" && svc.Spec.Selector[LabelRelease] == releaseID(f.badHash) {
			mu.Lock()
			failedAt = time.Now()
			mu.Unlock()
			http.Error(w, "unhealthy", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer health.Close()
	f.stage.Model = planner.ModelBlueGreen
	// Blue is the previous release's color: it is retired only after the next switch, so a
	// short delay keeps each good release quick.
	f.stage.BlueGreen = &planner.BlueGreen{RetireAfter: planner.Duration{Duration: 100 * time.Millisecond}}
	f.stage.Verify.HealthCheck = &planner.HealthCheck{URL: health.URL, Interval: planner.Duration{Duration: 50 * time.Millisecond},
		Successes: 1, Failures: 1, Timeout: planner.Duration{Duration: 10 * time.Second}}

	var samples []time.Duration
	for i := 0; i < b.N; i++ {
		good := f.commit(fmt.Sprintf("g%d", i), "good", fmt.Sprintf("1.%d", i))
		f.sync(good)
		f.waitFor(fmt.Sprintf("web#%d", 2*i+1), Completed)
		blue := releaseID(good.Stages[0].Hash)

		w, err := f.cs.CoreV1().Services(f.ns).Watch(context.Background(), metav1.ListOptions{FieldSelector: "metadata.name=web"})
		require.NoError(b, err)
		bad := f.commit(fmt.Sprintf("b%d", i), "bad", fmt.Sprintf("2.%d", i))
		f.badHash = bad.Stages[0].Hash
		f.sync(bad)
		switched := false
		var backAt time.Time
		for ev := range w.ResultChan() {
			svc, ok := ev.Object.(*corev1.Service)
			if !ok {
				continue
			}
			release := svc.Spec.Selector[LabelRelease]
			if release == releaseID(f.badHash) {
				switched = true
			}
			if switched && release == blue {
				backAt = time.Now()
				break
			}
		}
		w.Stop()
		mu.Lock()
		samples = append(samples, backAt.Sub(failedAt))
		mu.Unlock()
		f.waitFor(fmt.Sprintf("web#%d", 2*i+2), RollbackCompleted)
		f.settle()
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	b.ReportMetric(float64(samples[len(samples)/2].Microseconds())/1000, "failed-check-to-blue-p50-ms")
	b.ReportMetric(float64(samples[len(samples)-1].Microseconds())/1000, "failed-check-to-blue-max-ms")
}
