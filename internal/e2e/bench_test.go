package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"ebb.dev/ebb/gitsource"
	"ebb.dev/ebb/internal/gitserver"
	"ebb.dev/ebb/reconciler"
)

// BenchmarkPushToUpdate measures the time from a push to the Update deployment apply reaching
// the cluster (the dev Deployment's image changes), triggered by the local fsnotify watch or
// by a signed GitHub webhook. Polling is set to an hour, so only the trigger can explain it.
func BenchmarkPushToUpdate(b *testing.B) {
	b.Run("fsnotify", func(b *testing.B) {
		e := newEnv(b, "pushfs", envOptions{})
		e.startDaemon("--interval", "1h")
		benchPushes(b, e, func() {})
	})
	b.Run("webhook", func(b *testing.B) {
		const secret = "webhook-secret"
		e := newEnv(b, "pushhook", envOptions{server: &gitserver.Options{Username: "ebb", Password: "pw"}})
		e.daemonEnv = append(e.daemonEnv, "EBB_WEBHOOK_SECRET="+secret)
		d := e.startDaemon("--interval", "1h")
		benchPushes(b, e, func() { sendPush(b, d.port, secret) })
	})
}

// sendPush sends the daemon on port a GitHub push webhook signed with secret.
func sendPush(t testing.TB, port int, secret string) {
	t.Helper()
	body := []byte(`{"ref":"refs/heads/main"}`)
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/webhook", port), bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-Hub-Signature-256", gitsource.SignSHA256([]byte(secret), body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Less(t, resp.StatusCode, 300, "webhook refused: %s", resp.Status)
}

// benchPushes releases b.N new tags after a first one and reports the push-to-update latency.
func benchPushes(b *testing.B, e *env, notify func()) {
	first := e.release("1.0.0", "release 1.0.0")
	notify()
	e.waitExecution(first, reconciler.Completed)
	var samples []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tag := fmt.Sprintf("1.0.%d", i+1)
		w, err := e.devCS.AppsV1().Deployments(e.name+"-dev").Watch(context.Background(), metav1.ListOptions{FieldSelector: "metadata.name=web"})
		require.NoError(b, err)
		start := time.Now()
		sha := e.release(tag, "release "+tag)
		notify()
		waitImage(b, w, e.imageOf(tag))
		samples = append(samples, time.Since(start))
		w.Stop()
		b.StopTimer()
		e.waitExecution(sha, reconciler.Completed)
		b.StartTimer()
	}
	reportPercentiles(b, samples, "push-to-update")
}

func waitImage(b *testing.B, w watch.Interface, image string) {
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-w.ResultChan():
			if dep, ok := ev.Object.(*appsv1.Deployment); ok && dep.Spec.Template.Spec.Containers[0].Image == image {
				return
			}
		case <-timeout:
			b.Fatalf("the Deployment never got image %s", image)
		}
	}
}

// BenchmarkRollback measures, for a 3-replica Deployment whose new release crash-loops:
// from the failed verification to the rollback's Update deployment apply (from the daemon's
// own log timestamps), and to the rollback being done in the cluster: the old pods Ready and
// every pod of the failed release gone.
func BenchmarkRollback(b *testing.B) {
	e := newEnv(b, "rollbench", envOptions{})
	d := e.startDaemon()
	var toApply, toDone []time.Duration
	for i := 0; i < b.N; i++ {
		good := e.release(fmt.Sprintf("1.%d", i), "good release")
		e.waitExecution(good, reconciler.Completed)
		badTag := fmt.Sprintf("2.%d-broken", i)
		bad := e.release(badTag, "broken release")

		// Watch the cluster for the end state while the daemon works.
		doneAt := make(chan time.Time, 1)
		go func() { doneAt <- waitRolledBack(e, e.imageOf(fmt.Sprintf("1.%d", i)), e.imageOf(badTag)) }()
		parent := e.waitExecution(bad, reconciler.RollbackCompleted)
		done := <-doneAt

		failed := logTime(b, d.WaitLog(10*time.Second, "msg", "task failed", "execution", parent.Spec.DisplayName, "task", reconciler.TaskVerifyDeployment))
		apply := logTime(b, d.WaitLog(10*time.Second, "msg", "task started", "parent", parent.Spec.DisplayName, "task", reconciler.TaskUpdateDeployment))
		toApply = append(toApply, apply.Sub(failed))
		toDone = append(toDone, done.Sub(failed))
	}
	reportPercentiles(b, toApply, "failure-to-rollback-apply")
	reportPercentiles(b, toDone, "failure-to-rolled-back")
}

// waitRolledBack returns when dev's Deployment runs three Ready pods of good and no pod of bad.
func waitRolledBack(e *env, good, bad string) time.Time {
	ctx := context.Background()
	sawBad := false
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		pods, err := e.devCS.CoreV1().Pods(e.name+"-dev").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			continue
		}
		ready, badPods := 0, 0
		for _, p := range pods.Items {
			switch p.Spec.Containers[0].Image {
			case bad:
				badPods++
			case good:
				if podReady(&p) && p.DeletionTimestamp == nil {
					ready++
				}
			}
		}
		sawBad = sawBad || badPods > 0
		if sawBad && badPods == 0 && ready == 3 {
			return time.Now()
		}
	}
	return time.Time{}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// BenchmarkIdle200Pipelines deploys 200 pipelines of two stages each, then measures the
// daemon at rest: CPU per poll, API writes, and resident memory. Drift checks (--resync)
// are left out of the window: they are measured apart, as reads.
func BenchmarkIdle200Pipelines(b *testing.B) {
	const pipelines = 200
	e := newEnv(b, "idle", envOptions{})
	files := map[string]string{}
	for i := range pipelines {
		for path, content := range e.pipelineFiles(fmt.Sprintf("idle%03d", i), "1.0", 1) {
			files[path] = content
		}
	}
	_, err := e.repo.CommitFiles("200 pipelines", files)
	require.NoError(b, err)
	d := e.startDaemon("--interval", "250ms", "--resync", "1h", "--log-level", "info")
	start := time.Now()
	require.Eventually(b, func() bool {
		list, err := e.store.ListExecutions(context.Background(), "")
		if err != nil {
			return false
		}
		done := 0
		for _, x := range list {
			if x.Status.Phase == reconciler.Completed {
				done++
			}
		}
		return done == pipelines
	}, 15*time.Minute, time.Second)
	b.Logf("200 pipelines x 2 stages deployed in %s", time.Since(start).Round(time.Second))
	// At rest: the last records written, and the rollouts' Deployment watches closed (they
	// outlive their last rollout by 30s).
	time.Sleep(40 * time.Second)

	pid := d.Pid()
	// Writes are counted apart for the leader Lease, which the leader renews every 2s by design.
	metrics := func() (polls, writes, leases float64) {
		m := scrape(b, d.port)
		for k, v := range m {
			switch {
			case strings.HasPrefix(k, "ebb_git_polls_total{"):
				polls += v
			case strings.HasPrefix(k, "ebb_kube_requests_total{"):
				for _, verb := range []string{`verb="POST"`, `verb="PUT"`, `verb="PATCH"`, `verb="DELETE"`} {
					if !strings.Contains(k, verb) {
						continue
					}
					if strings.Contains(k, `resource="leases"`) {
						leases += v
					} else {
						writes += v
					}
				}
			}
		}
		return
	}
	b.ResetTimer()
	cpu0 := cpuTime(b, pid)
	polls0, writes0, leases0 := metrics()
	time.Sleep(time.Duration(b.N) * 10 * time.Second)
	cpu1 := cpuTime(b, pid)
	polls1, writes1, leases1 := metrics()
	b.StopTimer()
	polls := polls1 - polls0
	require.Positive(b, polls)
	b.ReportMetric(float64((cpu1-cpu0).Microseconds())/1000/polls, "ms-cpu/poll")
	b.ReportMetric(polls, "polls")
	b.ReportMetric(writes1-writes0, "api-writes")
	b.ReportMetric(leases1-leases0, "lease-renewals")
	b.ReportMetric(procStatusMiB(b, pid, "VmRSS"), "MiB-rss")
	b.ReportMetric(procStatusMiB(b, pid, "VmHWM"), "MiB-peak-rss")
}

// cpuTime is the user and system CPU time of a process, from /proc.
func cpuTime(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	require.NoError(b, err)
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

func procStatusMiB(b *testing.B, pid int, key string) float64 {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	require.NoError(b, err)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == key+":" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	b.Fatalf("no %s in /proc/%d/status", key, pid)
	return 0
}

// scrape reads the daemon's metrics as "name{labels}" -> value.
func scrape(b *testing.B, port int) map[string]float64 {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	require.NoError(b, err)
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func logTime(b *testing.B, line map[string]any) time.Time {
	ts, err := time.Parse(time.RFC3339Nano, fmt.Sprint(line["time"]))
	require.NoError(b, err)
	return ts
}

// reportPercentiles reports the median and 95th percentile of samples, in milliseconds.
func reportPercentiles(b *testing.B, samples []time.Duration, name string) {
	if len(samples) == 0 {
		return
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	at := func(q float64) float64 {
		i := int(q * float64(len(samples)-1))
		return float64(samples[i].Microseconds()) / 1000
	}
	b.ReportMetric(at(0.5), name+"-p50-ms")
	b.ReportMetric(at(0.95), name+"-p95-ms")
}
