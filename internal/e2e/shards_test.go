package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	ebbdaemon "ebb.dev/ebb/internal/daemon"
	"ebb.dev/ebb/internal/gitserver"
	"ebb.dev/ebb/reconciler"
)

// withApproval makes the prod stage of pipeline files wait for a release manager.
func withApproval(files map[string]string) map[string]string {
	for path, content := range files {
		if strings.HasPrefix(path, "pipelines/") {
			files[path] = strings.Replace(content, "  - name: prod\n    cluster: prod\n",
				"  - name: prod\n    cluster: prod\n    approval: {approvers: [group:release-managers], timeout: 24h}\n", 1)
		}
	}
	return files
}

// shardHolders returns the holder of each of shards' Leases in e's records namespace.
func shardHolders(t testing.TB, e *env, shards int) []string {
	t.Helper()
	holders := make([]string, shards)
	for i := range shards {
		l, err := e.devCS.CoordinationV1().Leases(e.records).Get(context.Background(), ebbdaemon.ShardLease(i, shards), metav1.GetOptions{})
		if err == nil && l.Spec.HolderIdentity != nil {
			holders[i] = *l.Spec.HolderIdentity
		}
	}
	return holders
}

// TestShardsShareAndHandOver runs three daemon processes with three shards against one
// cluster. They share the shards out, one each, and each acts only for its own pipelines.
// Every pipeline's release waits for an approval in prod when one replica is killed with
// SIGKILL: its shard is taken over, its executions are continued by the new holder from their
// records, and every release completes once approved, each pipeline with one execution.
func TestShardsShareAndHandOver(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "shards", envOptions{})
	const shards, pipelines = 3, 9
	name := func(i int) string { return fmt.Sprintf("shard-app-%d", i) }
	files := map[string]string{}
	owner := map[string]int{}
	for i := range pipelines {
		for path, content := range withApproval(e.pipelineFiles(name(i), "1.0", 1)) {
			files[path] = content
		}
		owner[name(i)] = ebbdaemon.ShardOf(name(i), shards)
	}
	rita := releaseManager(t, e)

	replicas := map[string]*daemon{}
	for _, id := range []string{"replica-a", "replica-b", "replica-c"} {
		replicas[id] = e.startDaemon("--leader-elect=true", "--shards", fmt.Sprint(shards), "--identity", id)
	}
	// One shard each.
	var holders []string
	require.Eventually(t, func() bool {
		holders = shardHolders(t, e, shards)
		seen := map[string]bool{}
		for _, h := range holders {
			if h == "" || replicas[h] == nil {
				return false
			}
			seen[h] = true
		}
		return len(seen) == shards
	}, 60*time.Second, 200*time.Millisecond, "the replicas did not share the shards out: %v", shardHolders(t, e, shards))

	sha, err := e.repo.CommitFiles("nine pipelines", files)
	require.NoError(t, err)
	waiting := map[string]*reconciler.Execution{}
	for i := range pipelines {
		x := waitPipelineExecution(t, e, name(i), sha, reconciler.Waiting)
		assert.Equal(t, "prod", x.Status.Stage)
		waiting[name(i)] = x
	}
	// Each replica acted for its own shard's pipelines only.
	for p, shard := range owner {
		for id, d := range replicas {
			n := d.CountLogs("msg", "task started", "pipeline", p)
			if id == holders[shard] {
				assert.Positive(t, n, "%s did not act for %s, of its shard %d", id, p, shard)
			} else {
				assert.Zero(t, n, "%s acted for %s, of %s's shard %d", id, p, holders[shard], shard)
			}
		}
	}

	// Kill the holder of shard 0, while its executions wait.
	victim := holders[0]
	replicas[victim].Kill()
	killed := time.Now()
	var taker string
	require.Eventually(t, func() bool {
		taker = shardHolders(t, e, shards)[0]
		return taker != "" && taker != victim
	}, 2*time.Minute, 100*time.Millisecond, "no replica took shard 0 over")
	t.Logf("shard 0 of %s owned by %s again %s after the kill", victim, taker, time.Since(killed).Round(100*time.Millisecond))
	replicas[taker].WaitLog(60*time.Second, "msg", "acting for the pipelines", "shard", "0")

	for i := range pipelines {
		out, err := exec.Command(ebbBin, "approve", waiting[name(i)].Spec.DisplayName, "--kubeconfig", rita, "-n", e.records).CombinedOutput()
		require.NoError(t, err, string(out))
	}
	for i := range pipelines {
		p := name(i)
		waitPipelineExecution(t, e, p, sha, reconciler.Completed)
		list, err := e.store.ListExecutions(context.Background(), p)
		require.NoError(t, err)
		assert.Len(t, list, 1, "%s ran more than once", p)
		if owner[p] == 0 {
			assert.Positive(t, replicas[taker].CountLogs("msg", "resuming execution", "execution", waiting[p].Spec.DisplayName),
				"%s did not continue %s from its record", taker, waiting[p].Spec.DisplayName)
		}
	}
	// The survivors still act for their own shards only.
	for p, shard := range owner {
		for id, d := range replicas {
			if id == victim || id == holders[shard] || (shard == 0 && id == taker) {
				continue
			}
			assert.Zero(t, d.CountLogs("msg", "task started", "pipeline", p), "%s acted for %s", id, p)
		}
	}
}

// TestShardsRebalanceOnJoin starts one replica with two shards, which takes both, then a
// second: the first hands one shard back, the second takes it, and then releases the
// pipelines of that shard.
func TestShardsRebalanceOnJoin(t *testing.T) {
	t.Parallel()
	const shards = 2
	e := newEnv(t, "shardjoin", envOptions{})
	names := oneInEachShard("join-app", shards)
	release := func(tag string) string { return releaseAll(t, e, names, tag) }
	a := e.startDaemon("--leader-elect=true", "--shards", fmt.Sprint(shards), "--identity", "join-a")
	require.Eventually(t, func() bool {
		h := shardHolders(t, e, shards)
		return h[0] == "join-a" && h[1] == "join-a"
	}, 60*time.Second, 200*time.Millisecond, "a replica alone did not take every shard: %v", shardHolders(t, e, shards))
	first := release("1.0")
	for _, n := range names {
		waitPipelineExecution(t, e, n, first, reconciler.Completed)
	}

	b := e.startDaemon("--leader-elect=true", "--shards", fmt.Sprint(shards), "--identity", "join-b")
	require.Eventually(t, func() bool {
		h := shardHolders(t, e, shards)
		return (h[0] == "join-a") != (h[1] == "join-a") && (h[0] == "join-b") != (h[1] == "join-b")
	}, 60*time.Second, 200*time.Millisecond, "the replicas did not share the shards out: %v", shardHolders(t, e, shards))
	a.WaitLog(10*time.Second, "msg", "handing a shard back to even out the replicas")
	moved := 0
	if shardHolders(t, e, shards)[1] == "join-b" {
		moved = 1
	}
	b.WaitLog(30*time.Second, "msg", "acting for the pipelines", "shard", fmt.Sprint(moved))

	next := release("1.1")
	for _, n := range names {
		waitPipelineExecution(t, e, n, next, reconciler.Completed)
		acted := b
		if ebbdaemon.ShardOf(n, shards) != moved {
			acted = a
		}
		assert.Positive(t, acted.CountLogs("msg", "task started", "pipeline", n, "commit", next[:7]), "%s: released by the shard's new holder", n)
	}
	assert.Zero(t, b.CountLogs("msg", "task started", "commit", first[:7]), "the joining replica ran nothing of the first release")
}

// TestShardCountChangeWaitsForOldReplicas runs a replica of one shard, then one of two, as a
// rolling update that changes sharding.shards would: the new replica acts for nothing while
// the old one holds ebb-leader, and takes both shards once the old one is gone.
func TestShardCountChangeWaitsForOldReplicas(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "shardcount", envOptions{})
	names := oneInEachShard("count-app", 2)
	old := e.startDaemon("--leader-elect=true", "--identity", "count-old")
	old.WaitLog(30*time.Second, "msg", "acting for the shard", "identity", "count-old")
	first := releaseAll(t, e, names, "1.0")
	for _, n := range names {
		waitPipelineExecution(t, e, n, first, reconciler.Completed)
	}

	next := e.startDaemon("--leader-elect=true", "--shards", "2", "--identity", "count-new")
	next.WaitLog(30*time.Second, "msg", "waiting for the replicas of another shard count to stop", "lease", ebbdaemon.LeaderLease)
	second := releaseAll(t, e, names, "1.1")
	for _, n := range names {
		waitPipelineExecution(t, e, n, second, reconciler.Completed)
	}
	assert.Zero(t, next.CountLogs("msg", "acting for the shard"), "the replica of the new count acted beside the old one")

	require.NoError(t, old.Terminate()) // SIGTERM: it releases ebb-leader
	next.WaitLog(30*time.Second, "msg", "acting for the pipelines", "shard", "0")
	next.WaitLog(30*time.Second, "msg", "acting for the pipelines", "shard", "1")
	third := releaseAll(t, e, names, "1.2")
	for _, n := range names {
		waitPipelineExecution(t, e, n, third, reconciler.Completed)
		assert.Positive(t, next.CountLogs("msg", "task started", "pipeline", n, "commit", third[:7]))
	}
}

// TestShardsWebhookReachesEveryReplica sends each push webhook to one replica of three, as a
// Service would, with polling off: the replicas that act for the pushed pipelines poll too.
func TestShardsWebhookReachesEveryReplica(t *testing.T) {
	t.Parallel()
	const secret, shards = "webhook-secret", 3
	e := newEnv(t, "shardhook", envOptions{server: &gitserver.Options{Username: "ebb", Password: "pw"}})
	e.daemonEnv = append(e.daemonEnv, "EBB_WEBHOOK_SECRET="+secret)
	names := oneInEachShard("hook-app", shards)
	release := func(tag string) string { return releaseAll(t, e, names, tag) }
	// A first commit, so that each replica's first poll succeeds, and the next is in an hour.
	_, err := e.repo.CommitFiles("a README", map[string]string{"README.md": "pipelines\n"})
	require.NoError(t, err)
	e.push()
	var replicas []*daemon
	for _, id := range []string{"hook-a", "hook-b", "hook-c"} {
		replicas = append(replicas, e.startDaemon("--leader-elect=true", "--shards", fmt.Sprint(shards), "--identity", id, "--interval", "1h"))
	}
	require.Eventually(t, func() bool {
		seen := map[string]bool{}
		for _, h := range shardHolders(t, e, shards) {
			seen[h] = true
		}
		return len(seen) == shards && !seen[""]
	}, 60*time.Second, 200*time.Millisecond, "the replicas did not share the shards out: %v", shardHolders(t, e, shards))

	for i, tag := range []string{"1.0", "1.1"} {
		sha := release(tag)
		sendPush(t, replicas[i].port, secret)
		for _, n := range names {
			waitPipelineExecution(t, e, n, sha, reconciler.Completed)
		}
	}
}

// oneInEachShard returns a pipeline name with prefix for each of shards.
func oneInEachShard(prefix string, shards int) []string {
	var names []string
	for i, taken := 0, map[int]bool{}; len(names) < shards; i++ {
		if n := fmt.Sprintf("%s-%d", prefix, i); !taken[ebbdaemon.ShardOf(n, shards)] {
			taken[ebbdaemon.ShardOf(n, shards)] = true
			names = append(names, n)
		}
	}
	return names
}

// releaseAll commits (and pushes) image tag for every pipeline of names.
func releaseAll(t testing.TB, e *env, names []string, tag string) string {
	t.Helper()
	files := map[string]string{}
	for _, n := range names {
		for path, content := range e.pipelineFiles(n, tag, 1) {
			files[path] = content
		}
	}
	sha, err := e.repo.CommitFiles("release "+tag, files)
	require.NoError(t, err)
	e.push()
	return sha
}

// waitPipelineExecution waits for pipeline's Deploy execution of commit to reach status.
func waitPipelineExecution(t testing.TB, e *env, pipeline, commit string, status reconciler.Status) *reconciler.Execution {
	t.Helper()
	var last *reconciler.Execution
	require.Eventually(t, func() bool {
		list, err := e.store.ListExecutions(context.Background(), pipeline)
		if err != nil {
			return false
		}
		for i := range list {
			if x := &list[i]; x.Spec.Commit == commit && x.Spec.Kind == reconciler.KindDeploy {
				last = x
				return x.Status.Phase == status
			}
		}
		return false
	}, 2*time.Minute, 100*time.Millisecond, "%s at %s never reached %s; last: %s", pipeline, commit, status, describe(last))
	return last
}
