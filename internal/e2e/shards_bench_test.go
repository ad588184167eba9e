package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	ebbdaemon "ebb.dev/ebb/internal/daemon"
	"ebb.dev/ebb/reconciler"
)

// BenchmarkShardHandover runs N pipelines (EBB_BENCH_SHARD_PIPELINES, default 3000) of one
// app each over three daemon processes with three shards, with the daemon's defaults but for
// an hour-long poll and resync (the repository watch triggers each poll), and measures:
//   - the initial sync, until every execution is COMPLETED, and how many did not;
//   - each replica's resident memory at rest;
//   - after kill -9 of the holder of shard 0: the time until another replica holds its Lease,
//     and until that replica acts for the shard's pipelines (their executions resumed, and
//     they planned at the newest commit);
//   - then a commit to one app of that shard: the time to its dev Deployment's new spec.
//
// EBB_BENCH_SHARD_PIPELINES=3000 go test ./internal/e2e -bench BenchmarkShardHandover -benchtime 1x -run '^$' -timeout 90m
func BenchmarkShardHandover(b *testing.B) {
	n := 3000
	if s := os.Getenv("EBB_BENCH_SHARD_PIPELINES"); s != "" {
		var err error
		n, err = strconv.Atoi(s)
		require.NoError(b, err)
	}
	const shards = 3
	e := newEnv(b, "shardbench", envOptions{})
	name, files := scaleApps(b, e, "h", n)
	_, err := e.repo.CommitFiles(fmt.Sprintf("%d pipelines", n), files)
	require.NoError(b, err)

	start := time.Now()
	replicas := map[string]*daemon{}
	for _, id := range []string{"bench-a", "bench-b", "bench-c"} {
		replicas[id] = e.startDaemon("--leader-elect=true", "--shards", strconv.Itoa(shards), "--identity", id,
			"--interval", "1h", "--resync", "1h", "--log-level", "info")
	}
	completed, failed := awaitExecutions(b, e, 60*time.Minute, func(*reconciler.Execution) bool { return true }, n)
	initial := time.Since(start)
	holders := shardHolders(b, e, shards)
	b.Logf("initial sync of %d pipelines over 3 replicas: %s, %d COMPLETED, %d not; shard holders %v",
		n, initial.Round(100*time.Millisecond), completed, failed, holders)
	time.Sleep(35 * time.Second) // at rest: the rollouts' watches closed
	var rss []float64
	for id, d := range replicas {
		mib := procStatusMiB(b, d.Pid(), "VmRSS")
		rss = append(rss, mib)
		b.Logf("%s: %.0f MiB resident", id, mib)
	}

	b.ResetTimer()
	victim := holders[0]
	replicas[victim].Kill()
	killed := time.Now()
	var taker string
	require.Eventually(b, func() bool {
		taker = shardHolders(b, e, shards)[0]
		return taker != "" && taker != victim
	}, 5*time.Minute, 50*time.Millisecond, "no replica took shard 0 over")
	leased := time.Since(killed)
	acting := replicas[taker].WaitLog(5*time.Minute, "msg", "acting for the pipelines", "shard", "0")
	owned := time.Since(killed)
	b.StopTimer()
	b.Logf("shard 0 (%v pipelines) of %s: Lease held by %s after %s, acted for after %s (resumed in %v, planned in all %v)",
		acting["pipelines"], victim, taker, leased.Round(10*time.Millisecond), owned.Round(10*time.Millisecond), acting["resume"], acting["took"])

	// A release of an app of the shard taken over.
	var app string
	for i := range n {
		if ebbdaemon.ShardOf(name(i), shards) == 0 {
			app = name(i)
			break
		}
	}
	w, err := e.devCS.AppsV1().Deployments(app+"-dev").Watch(context.Background(), metav1.ListOptions{FieldSelector: "metadata.name=web"})
	require.NoError(b, err)
	defer w.Stop()
	at := time.Now()
	_, err = e.repo.CommitFiles("release "+app+" 1.1", e.pipelineFiles(app, "1.1", 1))
	require.NoError(b, err)
	waitImage(b, w, "registry.example/"+app+":1.1")
	toSpec := time.Since(at)

	b.ReportMetric(initial.Seconds(), "s-initial-sync")
	b.ReportMetric(float64(failed), "initial-not-completed")
	b.ReportMetric(leased.Seconds(), "s-kill-to-lease")
	b.ReportMetric(owned.Seconds(), "s-kill-to-acting")
	b.ReportMetric(float64(toSpec.Milliseconds()), "ms-commit-to-spec-after-handover")
	b.ReportMetric(max(rss[0], rss[1], rss[2]), "MiB-rss-max-replica")
}
