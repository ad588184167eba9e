package realapps

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/reconciler"
)

// BenchmarkDriftResync200 deploys 200 pipelines of podinfo, as written (the app with false
// drift today: its `cpu: 2000m` is stored as "2"), through dev and prod, then measures the
// daemon at rest over drift resyncs (polls an hour apart): per resync, the API requests it
// sends (reads = GET, writes = POST, PUT, PATCH, DELETE; dry-runs count as writes; the leader
// Lease's renewals left out), the objects it reports as drifted, its CPU time, and how long
// it is busy (s-busy/resync, the median; the resync period when a pass does not end within
// it). Each iteration is one resync period; the window starts as a resync starts and ends a
// second before the next one.
//
// The period is 15s rather than a few seconds: a pass over 200 pipelines takes several
// seconds (client rate limits of 100 requests a second per cluster), and with a shorter period
// each "resync" would measure whatever part of a pass fits in it.
//
// Run it alone: go test -bench BenchmarkDriftResync200 -benchtime 3x -run '^$' -timeout 60m
func BenchmarkDriftResync200(b *testing.B) {
	const pipelines = 200
	const period = 15 * time.Second
	e := newEnv(b, "drift", podinfo, envOptions{})
	for i := range pipelines {
		name := fmt.Sprintf("drift%03d", i)
		require.NoError(b, e.repo.WriteFiles(map[string]string{
			"pipelines/" + name + ".yaml": pipelineFile(name, "apps/drift", podinfo, podinfo.tag, "rolling", "", ""),
		}))
		b.Cleanup(func() {
			deleteNamespace(b, e.devCS, name+"-dev")
			deleteNamespace(b, e.prodCS, name)
		})
	}
	_, err := e.repo.Commit("200 pipelines of podinfo")
	require.NoError(b, err)

	start := time.Now()
	d := e.startDaemon("--interval", "1h", "--resync", period.String(), "--log-level", "info")
	waitCompleted(b, e, pipelines, 30*time.Minute)
	deployed := time.Since(start)
	b.Logf("%d pipelines x 2 stages of podinfo deployed in %s", pipelines, deployed.Round(time.Second))
	// At rest: the HPAs scaled their Deployments, and the rollouts' Deployment watches closed
	// (they outlive the last rollout by 30s).
	time.Sleep(45 * time.Second)

	pid := d.Pid()
	before := waitResyncStart(b, d.port, 3*period)
	cpu0 := cpuTime(b, pid)
	var busy []time.Duration
	var profiles [][]int64
	var after map[string]float64
	var cpu1 time.Duration
	for b.Loop() {
		// Each window ends a second before the next resync starts, so that none of it counts.
		start := time.Now()
		last, profile := busyFor(b, pid, period-time.Second)
		busy, profiles = append(busy, last), append(profiles, profile)
		after, cpu1 = scrape(b, d.port), cpuTime(b, pid)
		time.Sleep(time.Until(start.Add(period)))
	}
	b.StopTimer()

	resyncs := float64(b.N)
	reads, writes, byResource := requests(before, after)
	b.ReportMetric(reads/resyncs, "reads/resync")
	b.ReportMetric(writes/resyncs, "writes/resync")
	b.ReportMetric((sum(after, "ebb_drift_total")-sum(before, "ebb_drift_total"))/resyncs, "drifted/resync")
	b.ReportMetric((sum(after, "ebb_drift_checks_total")-sum(before, "ebb_drift_checks_total"))/resyncs, "stage-checks/resync")
	b.ReportMetric(float64((cpu1-cpu0).Microseconds())/1000/resyncs, "ms-cpu/resync")
	b.ReportMetric(median(busy).Seconds(), "s-busy/resync")
	b.ReportMetric(deployed.Seconds(), "s-deploy")
	b.Logf("requests per resync by cluster, verb and resource: %s", perResync(byResource, resyncs))
	for i, p := range profiles {
		b.Logf("resync %d: busy for %s; CPU ms per 250ms: %v", i+1, busy[i], p)
	}
}

// busyFor watches the daemon's CPU time for d, from the start of a resync, and returns when
// it was last busy: the end of the last quarter second in which it used 20ms of CPU or more
// (the Lease's renewals use far less), and its CPU time in each quarter second, in
// milliseconds. Reading /proc costs the daemon nothing.
func busyFor(b *testing.B, pid int, d time.Duration) (time.Duration, []int64) {
	const step = 250 * time.Millisecond
	start := time.Now()
	last := time.Duration(0)
	var profile []int64
	prev := cpuTime(b, pid)
	for at := step; at <= d; at += step {
		time.Sleep(time.Until(start.Add(at)))
		cur := cpuTime(b, pid)
		if cur-prev >= 20*time.Millisecond {
			last = at
		}
		profile = append(profile, (cur - prev).Milliseconds())
		prev = cur
	}
	return last, profile
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// waitCompleted waits until n executions in e's records namespace are COMPLETED, and fails
// as soon as one ends otherwise.
func waitCompleted(b *testing.B, e *env, n int, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		list, err := e.store.ListExecutions(context.Background(), "")
		done := 0
		if err == nil {
			for i, x := range list {
				switch {
				case x.Status.Phase == reconciler.Completed:
					done++
				case x.Status.Phase.Terminal():
					b.Fatalf("an execution did not complete: %s", describe(&list[i]))
				}
			}
		}
		if done == n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d executions completed within %s (last error: %v)", done, n, timeout, err)
		}
		time.Sleep(time.Second)
	}
}

// waitResyncStart returns the daemon's metrics as they were just before its next drift
// resync sent its first request (the Lease's renewals aside) or finished its first drift
// check: after a quiet second, so that the tail of a resync in progress is not taken for the
// start of one.
func waitResyncStart(b *testing.B, port int, timeout time.Duration) map[string]float64 {
	b.Helper()
	prev := scrape(b, port)
	quietSince := time.Now()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		cur := scrape(b, port)
		// A resync shows as requests or, for stages at rest (which cost none), as drift checks.
		r, w, _ := requests(prev, cur)
		if r+w > 0 || sum(cur, "ebb_drift_checks_total") > sum(prev, "ebb_drift_checks_total") {
			if time.Since(quietSince) > time.Second {
				return prev
			}
			quietSince = time.Now()
		}
		prev = cur
	}
	b.Fatalf("no resync started after a quiet second within %s", timeout)
	return nil
}

// requests counts the Kubernetes requests sent between two scrapes, but the Lease's: reads
// (GET) and writes, and each series' increase.
func requests(before, after map[string]float64) (reads, writes float64, by map[string]float64) {
	by = map[string]float64{}
	for k, v := range after {
		if !strings.HasPrefix(k, "ebb_kube_requests_total{") || strings.Contains(k, `resource="leases"`) {
			continue
		}
		n := v - before[k]
		if n == 0 {
			continue
		}
		by[strings.TrimPrefix(k, "ebb_kube_requests_total")] = n
		if strings.Contains(k, `verb="GET"`) {
			reads += n
		} else {
			writes += n
		}
	}
	return reads, writes, by
}

func perResync(by map[string]float64, resyncs float64) string {
	keys := make([]string, 0, len(by))
	for k := range by {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%s %.1f", k, by[k]/resyncs))
	}
	return strings.Join(out, ", ")
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
