package realapps

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	ebbdaemon "ebb.dev/ebb/internal/daemon"
	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

// TestShardsThroughHomeOutage runs three `ebb run` processes with three shards against a home
// cluster of their own, for three real apps (guestbook, kustomize-guestbook and podinfo), each
// pipeline in a shard of its own. The replicas share the shards out, one each, and each app's
// release is deployed by the holder of its shard alone.
//
// Then the home API server is killed for 22s, past the Leases' 10s renewal deadline and their
// 15s duration, while the replicas hold them at rest. Every replica stops acting for its
// shard within the renewal deadline (client-go gives up leading). Once the API server is
// back, the shards are held again, one each, by live holders, and no replica ever acts for
// more than one meanwhile (the first one back does not take them all); the outage started no
// execution and no rollback; and the next release of each app, committed after it, completes
// once, deployed by whichever replica now holds its shard. Throughout, no shard is acted for
// by two replicas at once, as the replicas' own ebb_shard_owned gauges, sampled every 100ms,
// show.
func TestShardsThroughHomeOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const shards = 3
	home := testcluster.StartT(t, testcluster.Options{Name: "shardhome"})
	root, err := testcluster.ModuleRoot()
	require.NoError(t, err)
	require.NoError(t, reconciler.InstallCRDs(ctx, dynamic.NewForConfigOrDie(home.Config), filepath.Join(root, "charts", "ebb", "crds")))
	homeCS := kubernetes.NewForConfigOrDie(home.Config)

	first := newEnv(t, "sharded-guestbook", guestbook, envOptions{home: home})
	apps := []*env{first, first.beside("sharded-kustomize-guestbook", kustomizeGuestbook), first.beside("sharded-podinfo", podinfo)}
	inShard := map[int]bool{}
	for _, e := range apps {
		inShard[ebbdaemon.ShardOf(e.name, shards)] = true
	}
	require.Len(t, inShard, len(apps), "the pipelines must be in different shards")

	replicas := map[string]*daemon{}
	for _, id := range []string{"sharded-a", "sharded-b", "sharded-c"} {
		replicas[id] = first.startDaemon("--leader-elect=true", "--shards", fmt.Sprint(shards), "--identity", id,
			"--retry-backoff", "1s", "--cache-dir", filepath.Join(first.dir, "cache-"+id))
	}
	owners := newOwnerWatch(replicas, shards)
	go owners.run()
	t.Cleanup(owners.stop)

	holders := waitShared(t, homeCS, first.records, replicas, shards, time.Minute)
	t.Logf("holders: %v", holders)
	v1 := releaseTogether(t, apps, "release each app as written", func(e *env) string { return e.app.tag })
	for _, e := range apps {
		e.requireCompleted(v1)
		requireActedBy(t, e, v1, replicas, holders[ebbdaemon.ShardOf(e.name, shards)])
	}

	// The home API server goes away while the replicas hold their shards, at rest.
	require.NoError(t, home.StopAPIServer())
	stopped := time.Now()
	require.Eventually(t, func() bool { return owners.actingNow() == 0 }, 20*time.Second, 100*time.Millisecond,
		"a replica still acts for a shard %s after the home API server went away", time.Since(stopped).Round(time.Second))
	t.Logf("every replica stopped acting %s after the home API server went away", time.Since(stopped).Round(100*time.Millisecond))
	owners.countCrowding()                                // from here on, one shard each: the first replica back takes no more
	time.Sleep(time.Until(stopped.Add(22 * time.Second))) // the outage outlasts the Leases
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	require.NoError(t, home.StartAPIServer(startCtx))
	restarted := time.Now()

	holders = waitShared(t, homeCS, first.records, replicas, shards, 90*time.Second)
	t.Logf("holders %s after the home API server came back: %v", time.Since(restarted).Round(100*time.Millisecond), holders)
	for _, e := range apps {
		assert.Len(t, e.executions(), 1, "the outage started an execution of %s: %s", e.name, e.describeAll())
		for _, stage := range []string{"dev", "prod"} {
			ledger, err := e.store.Ledger(ctx, e.name, stage)
			require.NoError(t, err)
			if assert.NotNil(t, ledger.Status.Current, "%s %s", e.name, stage) {
				assert.Equal(t, v1, ledger.Status.Current.Commit, "the %s ledger of %s", stage, e.name)
			}
		}
	}

	ended := map[string]map[string]float64{} // the executions each replica ended, by pipeline
	for id, d := range replicas {
		ended[id] = map[string]float64{}
		m := scrape(t, d.port)
		for _, e := range apps {
			ended[id][e.name] = sum(m, "ebb_executions_total", `pipeline="`+e.name+`"`)
		}
	}
	v2 := releaseTogether(t, apps, "the next release of each app, after the outage", func(e *env) string { return nextTag[e.app.dir] })
	for _, e := range apps {
		e.requireCompleted(v2)
		holder := holders[ebbdaemon.ShardOf(e.name, shards)]
		requireActedBy(t, e, v2, replicas, holder)
		for id, d := range replicas {
			n := sum(scrape(t, d.port), "ebb_executions_total", `pipeline="`+e.name+`"`) - ended[id][e.name]
			if id == holder {
				assert.Equal(t, 1.0, n, "executions of %s that %s, its shard's holder, ended", e.name, id)
			} else {
				assert.Zero(t, n, "executions of %s that %s ended, of %s's shard", e.name, id, holder)
			}
		}
		assert.Len(t, e.deploys(v2), 1, "executions of the release after the outage: %s", e.describeAll())
		assert.Empty(t, e.rollbacks(), "an outage of the home cluster started a rollback")
		assert.Equal(t, e.imageOf(nextTag[e.app.dir]), image(t, e.devCS, e.devNS(), e.app.service), "dev's image of %s", e.name)
		assert.Equal(t, e.imageOf(nextTag[e.app.dir]), image(t, e.prodCS, e.prodNS(), e.app.service), "prod's image of %s", e.name)
	}

	owners.stop()
	assert.Empty(t, owners.overlaps(), "shards acted for by two replicas at once")
	assert.Empty(t, owners.crowding(), "a replica acted for more than its share after the outage")
	assert.Positive(t, owners.samples(), "the replicas' gauges were never read")
}

// nextTag is each app's release after the one its manifests name.
var nextTag = map[string]string{
	guestbook.dir:          "v6",
	kustomizeGuestbook.dir: "v6",
	podinfo.dir:            "6.14.2",
}

// releaseTogether commits, in one commit, the pipeline of each of apps (which share a
// repository) releasing tag(app), and returns the commit.
func releaseTogether(t *testing.T, apps []*env, message string, tag func(*env) string) string {
	t.Helper()
	for _, e := range apps {
		require.NoError(t, e.repo.WriteFiles(map[string]string{"pipelines/" + e.name + ".yaml": e.pipeline(tag(e))}))
	}
	sha, err := apps[0].repo.Commit(message)
	require.NoError(t, err)
	return sha
}

// waitShared waits until each of shards' Leases in records is held by a replica of its own,
// renewed within the Lease's duration, and that replica says it acts for the shard; it
// returns the holders by shard.
func waitShared(t *testing.T, cs kubernetes.Interface, records string, replicas map[string]*daemon, shards int, timeout time.Duration) []string {
	t.Helper()
	var holders []string
	var why string
	ok := assert.Eventually(t, func() bool {
		holders, why = make([]string, shards), ""
		for i := range shards {
			l, err := cs.CoordinationV1().Leases(records).Get(context.Background(), ebbdaemon.ShardLease(i, shards), metav1.GetOptions{})
			switch {
			case err != nil:
				why = err.Error()
				return false
			case l.Spec.HolderIdentity == nil || replicas[*l.Spec.HolderIdentity] == nil:
				why = fmt.Sprintf("shard %d has no holder", i)
				return false
			case l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil ||
				time.Since(l.Spec.RenewTime.Time) > time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second:
				why = fmt.Sprintf("shard %d's Lease has expired", i)
				return false
			}
			holders[i] = *l.Spec.HolderIdentity
			if owned, err := ownedShards(replicas[holders[i]].port); err != nil || owned[i] != 1 {
				why = fmt.Sprintf("%s, which holds shard %d, does not act for it", holders[i], i)
				return false
			}
		}
		sorted := slices.Sorted(slices.Values(holders))
		if len(slices.Compact(sorted)) != shards {
			why = fmt.Sprintf("not one shard each: %v", holders)
			return false
		}
		return true
	}, timeout, 200*time.Millisecond)
	if !ok {
		t.Fatalf("the replicas did not share the shards out within %s: %s", timeout, why)
	}
	return holders
}

// requireActedBy requires that holder, and no other replica, ran the tasks of e's execution
// at commit.
func requireActedBy(t *testing.T, e *env, commit string, replicas map[string]*daemon, holder string) {
	t.Helper()
	for id, d := range replicas {
		n := d.CountLogs("msg", "task started", "pipeline", e.name, "commit", short(commit))
		if id == holder {
			require.Positive(t, n, "%s did not act for %s, of its shard", id, e.name)
		} else {
			require.Zero(t, n, "%s acted for %s, of %s's shard", id, e.name, holder)
		}
	}
}

// ownerWatch samples the ebb_shard_owned gauges of replicas: a replica sets a shard's gauge
// to 1 before it starts acting for the shard and back to 0 once its work for the shard has
// stopped, so two replicas with 1 for one shard at once both act for it.
type ownerWatch struct {
	replicas map[string]*daemon
	shards   int
	done     chan struct{}
	once     sync.Once
	finished chan struct{}

	mu     sync.Mutex
	now    map[string]map[int]float64
	n      int
	double []string
	// crowded, once counting, lists the (first 20) samples in which a replica acted for more
	// than one shard.
	counting bool
	crowded  []string
}

func newOwnerWatch(replicas map[string]*daemon, shards int) *ownerWatch {
	return &ownerWatch{replicas: replicas, shards: shards, done: make(chan struct{}), finished: make(chan struct{})}
}

func (w *ownerWatch) run() {
	defer close(w.finished)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		now := map[string]map[int]float64{}
		for id, d := range w.replicas {
			if owned, err := ownedShards(d.port); err == nil {
				now[id] = owned
			}
		}
		w.mu.Lock()
		w.now, w.n = now, w.n+1
		for i := range w.shards {
			var acting []string
			for id, owned := range now {
				if owned[i] == 1 {
					acting = append(acting, id)
				}
			}
			if len(acting) > 1 {
				slices.Sort(acting)
				w.double = append(w.double, fmt.Sprintf("%s shard %d: %v", time.Now().Format("15:04:05.000"), i, acting))
			}
		}
		for id, owned := range now {
			if n := countOwned(owned); w.counting && n > 1 && len(w.crowded) < 20 {
				w.crowded = append(w.crowded, fmt.Sprintf("%s %s: %d shards", time.Now().Format("15:04:05.000"), id, n))
			}
		}
		w.mu.Unlock()
		select {
		case <-w.done:
			return
		case <-tick.C:
		}
	}
}

// stop ends the sampling and waits for the last sample.
func (w *ownerWatch) stop() {
	w.once.Do(func() { close(w.done) })
	<-w.finished
}

// countCrowding starts listing the samples in which a replica acts for more than one shard.
func (w *ownerWatch) countCrowding() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.counting = true
}

func (w *ownerWatch) crowding() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.crowded
}

func countOwned(owned map[int]float64) int {
	n := 0
	for _, v := range owned {
		if v == 1 {
			n++
		}
	}
	return n
}

// actingNow counts the shards, of every replica, acted for at the last sample; -1 when a
// replica could not be read.
func (w *ownerWatch) actingNow() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.now) < len(w.replicas) {
		return -1
	}
	n := 0
	for _, owned := range w.now {
		n += countOwned(owned)
	}
	return n
}

func (w *ownerWatch) overlaps() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.double
}

func (w *ownerWatch) samples() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// ownedShards reads a daemon's ebb_shard_owned gauges, by shard.
func ownedShards(port int) (map[int]float64, error) {
	m, err := readMetrics(port)
	if err != nil {
		return nil, err
	}
	out := map[int]float64{}
	for k, v := range m {
		var shard int
		if _, err := fmt.Sscanf(k, `ebb_shard_owned{shard="%d"}`, &shard); err == nil {
			out[shard] = v
		}
	}
	return out, nil
}
