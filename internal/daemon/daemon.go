// Package daemon wires ebb's parts into the long-running reconciler that `ebb run` starts:
// the Git source feeds snapshots to the planner, whose releases the reconciler rolls out,
// while an HTTP server exposes metrics, health and the push webhook. The pipelines are split
// into shards, each with a Lease: a replica acts only for the shards it holds (shards.go),
// and the others take a shard over when its holder stops.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"ebb.dev/ebb/gitsource"
	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/internal/dashboard"
	"ebb.dev/ebb/internal/ratelimit"
	"ebb.dev/ebb/planner"
	"ebb.dev/ebb/reconciler"
)

// Options configure the daemon. cmd/ebb fills them from flags.
type Options struct {
	// Source says which repository, ref and path to follow, and how often to poll.
	Source gitsource.Options
	// Config is the daemon config (clusters, remote bases).
	Config *config.Config
	// Home is the cluster ebb runs in: its records, events and Lease live there.
	Home *rest.Config
	// Namespace holds the records and the Lease.
	Namespace string
	// Listen is the address of the metrics, health and webhook server; "" serves nothing.
	Listen string
	// WebhookSecret verifies push webhooks; empty disables the webhook endpoint.
	WebhookSecret []byte
	// Dashboard serves the Executions page read-only on Listen, as the daemon's identity.
	Dashboard bool
	// Profiling serves Go's runtime profiles on Listen, under /debug/pprof/.
	Profiling bool
	// Resync is how often every pipeline's current target is reconciled again, to find drift,
	// when no commit arrives.
	Resync time.Duration
	// KubeQPS and KubeBurst limit the requests of each Kubernetes client the daemon has (one
	// per cluster, and one for its records): a sustained rate and a burst. Default 100 and
	// 200 (client-go's own default of 5 cannot record hundreds of executions).
	KubeQPS   float32
	KubeBurst int
	// MaxConcurrent bounds the executions that run at once; default
	// reconciler.DefaultMaxConcurrent.
	MaxConcurrent int
	// RetryBackoff is the first wait before work that failed because a cluster could not
	// answer is tried again; it grows up to an hour. Default (zero) is the reconciler's, 30s.
	RetryBackoff time.Duration
	// LeaderElection makes replicas share the pipelines through Leases (one per shard); off,
	// this process acts alone for every pipeline.
	LeaderElection bool
	// Shards is how many shards the pipelines are split into, each acted for by one replica
	// at a time; default 1 (one replica acts, the others wait to take over).
	Shards int
	// Identity names this replica in the Leases; default the host name.
	Identity string
	// Logger receives every log line.
	Logger *slog.Logger
}

// The default client rate limits, per cluster.
const (
	DefaultKubeQPS   = 100
	DefaultKubeBurst = 200
)

// Daemon is a running ebb.
type Daemon struct {
	opts     Options
	log      *slog.Logger
	source   *gitsource.Source
	renderer *planner.Renderer
	// parsed keeps each pipeline file's parse between the commits plan loads.
	parsed   planner.ParseCache
	clusters *clusters
	reg      *prometheus.Registry
	kube     *kubeRequests
	metrics  *reconciler.Metrics
	records  dynamic.Interface
	events   kubernetes.Interface
	polled   atomic.Bool

	planMu sync.Mutex // one plan at a time: of a new snapshot, or of a shard taken over

	mu sync.Mutex
	// snap is the newest snapshot, and gen numbers the snapshots, so that a pipeline takes
	// no target of an older commit after a newer one (see reconciler.Target.Generation).
	snap *gitsource.Snapshot
	gen  int64
	// acting holds the shards this replica acts for, by index.
	acting map[int]*shard
	// sharder shares the shards with the other replicas (with LeaderElection).
	sharder *sharder
}

// shard is the part of the pipelines one replica acts for: its reconciler and status writer
// are its own, and live as long as the replica holds the shard.
type shard struct {
	index  int
	owns   func(pipeline string) bool // nil: every pipeline
	ctx    context.Context
	rec    *reconciler.Reconciler
	status *statusWriter

	mu      sync.Mutex
	targets map[string]*reconciler.Target // of the newest snapshot, re-synced for drift
}

// offer hands t to the shard's reconciler, and keeps it for the drift resync.
func (sh *shard) offer(t *reconciler.Target) {
	sh.mu.Lock()
	sh.targets[t.Name()] = t
	sh.mu.Unlock()
	sh.rec.Sync(sh.ctx, []*reconciler.Target{t})
}

// keepOnly forgets the targets of pipelines not in names (removed from Git, or in error).
func (sh *shard) keepOnly(names map[string]bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for name := range sh.targets {
		if !names[name] {
			delete(sh.targets, name)
		}
	}
}

// target returns the shard's target of pipeline, or nil.
func (sh *shard) target(pipeline string) *reconciler.Target {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.targets[pipeline]
}

func (sh *shard) all() []*reconciler.Target {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	out := make([]*reconciler.Target, 0, len(sh.targets))
	for _, t := range sh.targets {
		out = append(out, t)
	}
	return out
}

func (sh *shard) ownsPipeline(name string) bool { return sh.owns == nil || sh.owns(name) }

// Run runs the daemon until ctx is done. The execution in progress then parks at its task
// boundary, recorded, for the next leader to continue.
func Run(ctx context.Context, opts Options) error {
	d, err := newDaemon(opts)
	if err != nil {
		return err
	}
	defer d.source.Close()

	var wg sync.WaitGroup
	errs := make(chan error, 2)
	if opts.Listen != "" {
		srv, l, err := d.server(ctx)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- err
			}
		}()
		defer func() {
			shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(shutdown)
			wg.Wait()
		}()
	}
	return d.run(ctx)
}

// run follows the repository, and acts for every pipeline (without leader election) or for
// the shards this replica holds, until ctx is done.
func (d *Daemon) run(ctx context.Context) error {
	follow := make(chan error, 1)
	go func() { follow <- d.follow(ctx) }()
	if !d.opts.LeaderElection {
		err := d.act(ctx, -1)
		if err := <-follow; err != nil && ctx.Err() == nil {
			return err
		}
		return err
	}
	d.sharder.run(ctx)
	if err := <-follow; ctx.Err() == nil {
		return err
	}
	return nil
}

// follow polls the repository (and watches a local one) until ctx ends: every replica does,
// whatever it holds, so that a shard taken over is planned from the newest commit at once.
func (d *Daemon) follow(ctx context.Context) error {
	go d.clusters.watch(ctx) // rotated kubeconfig Secrets
	if dir, ok := gitsource.LocalPath(d.opts.Source.URL); ok {
		// A local repository: a commit reaches the planner at once, not on the next poll.
		w, err := gitsource.NewWatcher(dir, d.source, d.log)
		if err != nil {
			d.log.Warn("no local watch; polling only", "err", err)
		} else {
			defer w.Close()
			go func() { _ = w.Run(ctx) }()
		}
	}
	err := d.source.Run(ctx, func(snap *gitsource.Snapshot) { d.onSnapshot(snap) })
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func newDaemon(opts Options) (*Daemon, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Resync <= 0 {
		opts.Resync = time.Minute
	}
	log := opts.Logger
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	kube := newKubeRequests(reg)
	opts.Home = kube.instrument(opts.Home, "home")
	if opts.KubeQPS <= 0 {
		opts.KubeQPS = DefaultKubeQPS
	}
	if opts.KubeBurst <= 0 {
		opts.KubeBurst = DefaultKubeBurst
	}
	if opts.Home.QPS == 0 {
		opts.Home.QPS, opts.Home.Burst = opts.KubeQPS, opts.KubeBurst
	}

	srcOpts := opts.Source
	srcOpts.Logger, srcOpts.Registerer = log, reg
	source, err := gitsource.New(srcOpts)
	if err != nil {
		return nil, err
	}
	// The records and Events of executions that roll back or verify go before the others
	// (ratelimit.Urgent). Each client has a rate limit of its own, as before; opts.Home
	// keeps none, so the clients built from it later (the Leases', a cluster "inCluster")
	// have their own too.
	records, err := dynamic.NewForConfig(ratelimit.Config(opts.Home))
	if err != nil {
		return nil, err
	}
	events, err := kubernetes.NewForConfig(ratelimit.Config(opts.Home))
	if err != nil {
		return nil, err
	}
	if opts.Shards <= 0 {
		opts.Shards = 1
	}
	clusters := newClusters(opts.Config, opts.Home, events, kube, log)
	clusters.qps, clusters.burst = opts.KubeQPS, opts.KubeBurst
	d := &Daemon{
		opts: opts, log: log, source: source, reg: reg, kube: kube, clusters: clusters,
		renderer: planner.NewRenderer(plannerOptions(opts.Config)),
		metrics:  reconciler.NewMetrics(reg), records: records, events: events,
		acting: map[int]*shard{},
	}
	if opts.LeaderElection {
		id := opts.Identity
		if id == "" {
			id, _ = os.Hostname()
		}
		// A client of its own: renewals never wait behind the records' rate limit.
		leases, err := kubernetes.NewForConfig(opts.Home)
		if err != nil {
			return nil, err
		}
		d.sharder = newSharder(opts.Shards, id, opts.Namespace, leases, reg, log, func(ctx context.Context, i int) {
			if err := d.act(ctx, i); err != nil && ctx.Err() == nil {
				d.log.Error("stopped acting for a shard", "shard", i, "err", err)
			}
		}, source.Trigger)
	}
	return d, nil
}

// act acts for shard index (-1: every pipeline) until ctx ends: it resumes the shard's open
// executions, plans its pipelines at the newest commit, and then hands them each new commit,
// keeping their Pipeline objects up to date, notifying and writing back.
func (d *Daemon) act(ctx context.Context, index int) error {
	began := time.Now()
	sh := &shard{index: index, ctx: ctx, targets: map[string]*reconciler.Target{}}
	log := d.log
	if index >= 0 && d.opts.Shards > 1 {
		shards := d.opts.Shards
		sh.owns = func(pipeline string) bool { return ShardOf(pipeline, shards) == index }
		log = log.With("shard", index)
	}
	sh.status = newStatusWriter(reconciler.NewStore(d.records, d.opts.Namespace), d.events, sh.owns, log)
	sh.rec = reconciler.New(reconciler.Options{
		Namespace: d.opts.Namespace, Records: d.records, Events: d.events, Clusters: d.clusters.get,
		Render: d.renderAt, Logger: log, Metrics: d.metrics, RetryBackoff: d.opts.RetryBackoff,
		MaxConcurrent: d.opts.MaxConcurrent, Owns: sh.owns,
		Observer: sh.status,
	})
	// The status writer reads the records beside Resume: it keeps what Resume writes
	// meanwhile over what it reads (statusWriter.markFresh).
	go sh.status.run(ctx)
	sh.status.poke()
	// Notifications and write-back follow the execution records (closeloop.go).
	go d.closeLoop(ctx, sh.owns)
	if err := sh.rec.Resume(ctx); err != nil {
		return fmt.Errorf("resume executions: %w", err)
	}
	resumed := time.Since(began)
	d.mu.Lock()
	d.acting[index] = sh
	snap, gen := d.snap, d.gen
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.acting, index)
		d.mu.Unlock()
	}()
	if snap != nil {
		d.planMu.Lock()
		d.planFor(snap, gen, []*shard{sh})
		d.planMu.Unlock()
		log.Info("acting for the pipelines", "commit", snap.ShortCommit(), "pipelines", len(sh.all()),
			"took", time.Since(began).Round(time.Millisecond).String(), "resume", resumed.Round(time.Millisecond).String())
	}
	go d.resync(ctx, sh)
	go d.watchReconcileRequests(ctx, sh) // reconcile.go
	<-ctx.Done()
	sh.rec.Wait()
	return nil
}

// onSnapshot plans the pipelines of the shards acted for at a new commit, and hands each
// pipeline's target to its shard as soon as it renders: a pipeline slow to render delays no
// other's release.
func (d *Daemon) onSnapshot(snap *gitsource.Snapshot) {
	d.polled.Store(true)
	d.planMu.Lock()
	defer d.planMu.Unlock()
	d.mu.Lock()
	d.snap = snap
	d.gen++
	gen := d.gen
	acting := make([]*shard, 0, len(d.acting))
	for _, sh := range d.acting {
		acting = append(acting, sh)
	}
	d.mu.Unlock()
	if len(acting) > 0 {
		d.planFor(snap, gen, acting)
	}
}

// planFor plans snap for shards, and hands each their pipelines' targets. Called with
// d.planMu held.
func (d *Daemon) planFor(snap *gitsource.Snapshot, gen int64, shards []*shard) {
	shardOf := func(name string) *shard {
		for _, sh := range shards {
			if sh.ownsPipeline(name) {
				return sh
			}
		}
		return nil
	}
	targets, view := d.plan(snap, func(name string) bool { return shardOf(name) != nil }, func(t *reconciler.Target) {
		t.Generation = gen
		shardOf(t.Name()).offer(t)
	})
	names := map[string]bool{}
	for _, t := range targets {
		names[t.Name()] = true
	}
	for _, sh := range shards {
		if view != nil {
			sh.keepOnly(names)
			sh.status.setView(view)
		}
	}
}

// resync hands the shard's targets to its reconciler again every Resync, to restore drift.
func (d *Daemon) resync(ctx context.Context, sh *shard) {
	t := time.NewTicker(d.opts.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			sh.rec.Sync(ctx, sh.all())
			sh.status.touchAll()
		}
	}
}

// plan loads the pipelines of snap and renders the enabled ones that owns accepts, using both cores, and calls ready
// with each pipeline's target as soon as all its stages rendered (from several goroutines,
// one call at a time). A pipeline with an error is logged with its location and skipped; the
// others go on. plan returns every target, in file order, and the view of what snap holds of
// every pipeline, errors included, for the Pipeline objects; nil when the repository could
// not be read.
func (d *Daemon) plan(snap *gitsource.Snapshot, owns func(string) bool, ready func(*reconciler.Target)) ([]*reconciler.Target, *gitView) {
	log := d.log.With("commit", snap.ShortCommit())
	repo := planner.NewRepo(snap.FS)
	opts := plannerOptions(d.opts.Config)
	opts.Parsed = &d.parsed
	pipelines, loadErr := planner.Load(repo, opts)
	if loadErr != nil {
		log.Error("pipelines with errors are skipped", "err", loadErr)
	}
	var enabled []*planner.Pipeline
	for _, p := range pipelines {
		if !owns(p.Metadata.Name) {
			continue // another replica's
		}
		if p.Spec.Enabled {
			enabled = append(enabled, p)
		} else {
			log.Debug("pipeline is not enabled; planned only", "pipeline", p.Metadata.Name)
		}
	}
	var (
		mu       sync.Mutex
		byName   = map[string]*reconciler.Target{}
		releases []*planner.Release
		failed   planner.RenderErrors
	)
	d.renderer.RenderEach(repo, enabled, func(p *planner.Pipeline, rels []*planner.Release, err error) {
		mu.Lock()
		defer mu.Unlock()
		releases = append(releases, rels...)
		var stages planner.RenderErrors
		if errors.As(err, &stages) {
			log.Error("pipeline whose stages do not render is skipped", "pipeline", p.Metadata.Name, "err", err)
			failed = append(failed, stages...)
			return
		}
		byStage := map[string]*planner.Release{}
		for _, rel := range rels {
			byStage[rel.Pipeline+"/"+rel.Stage] = rel
		}
		if t := target(p, snap, byStage); t != nil {
			byName[p.Metadata.Name] = t
			ready(t)
		}
	})
	var targets []*reconciler.Target
	for _, p := range enabled {
		if t := byName[p.Metadata.Name]; t != nil {
			targets = append(targets, t)
		}
	}
	return targets, newGitView(snap, pipelines, loadErr, releases, failed.Err())
}

// target assembles p's target from its stages' releases, or returns nil when a stage did not
// render.
func target(p *planner.Pipeline, snap *gitsource.Snapshot, releases map[string]*planner.Release) *reconciler.Target {
	t := &reconciler.Target{Pipeline: p, Commit: reconciler.Commit{SHA: snap.Commit, Message: snap.Message}}
	for i := range p.Spec.Stages {
		s := &p.Spec.Stages[i]
		rel := releases[p.Metadata.Name+"/"+s.Name]
		if rel == nil {
			return nil
		}
		t.Stages = append(t.Stages, reconciler.Desired{
			Stage: s, Hash: rel.Hash, Namespace: rel.Namespace, Deployment: rel.Deployment, Service: rel.Service,
			Images: rel.Images, Objects: rel.Objects,
		})
	}
	return t
}

// renderAt renders one pipeline at an older commit, for rollbacks and resumed executions.
func (d *Daemon) renderAt(ctx context.Context, commit, pipeline string) (*reconciler.Target, error) {
	snap, err := d.source.SnapshotAt(ctx, commit)
	if err != nil {
		return nil, err
	}
	repo := planner.NewRepo(snap.FS)
	pipelines, loadErr := planner.Load(repo, plannerOptions(d.opts.Config))
	for _, p := range pipelines {
		if p.Metadata.Name != pipeline {
			continue
		}
		releases, err := d.renderer.RenderAll(repo, []*planner.Pipeline{p})
		if err != nil {
			return nil, fmt.Errorf("render pipeline %q at commit %s: %w", pipeline, commit, err)
		}
		byStage := map[string]*planner.Release{}
		for _, rel := range releases {
			byStage[rel.Pipeline+"/"+rel.Stage] = rel
		}
		return target(p, snap, byStage), nil
	}
	if loadErr != nil {
		return nil, fmt.Errorf("pipeline %q at commit %s: %w", pipeline, commit, loadErr)
	}
	return nil, fmt.Errorf("commit %s has no pipeline %q", commit, pipeline)
}

// server serves /metrics, /healthz, /readyz, with a secret /webhook, and with Dashboard the
// Executions page.
func (d *Daemon) server(ctx context.Context) (*http.Server, net.Listener, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		// A replica that acts for no shard is ready: it serves and waits. One that acts is
		// ready once it read Git.
		if d.actingAny() && !d.polled.Load() {
			http.Error(w, "waiting for the first snapshot", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	if d.opts.Profiling {
		handleProfiling(mux)
	}
	if len(d.opts.WebhookSecret) > 0 {
		wopts := gitsource.DefaultWebhookOptions()
		wopts.Secret, wopts.Logger, wopts.Registerer = d.opts.WebhookSecret, d.log, d.reg
		var target gitsource.Triggerer = d.source
		if d.sharder != nil {
			target = d.sharder // polls here, and tells the other replicas to
		}
		hook, err := gitsource.NewWebhook(target, wopts)
		if err != nil {
			return nil, nil, err
		}
		mux.Handle("/webhook", hook)
	}
	if d.opts.Dashboard {
		// Read-only, as the daemon's own identity: people approve as themselves, with `ebb
		// approve` or `ebb dashboard`.
		client, err := dynamic.NewForConfig(d.opts.Home)
		if err != nil {
			return nil, nil, err
		}
		dash, err := dashboard.New(dashboard.Options{Client: client, Namespace: d.opts.Namespace, ReadOnly: true, Logger: d.log.With("component", "dashboard")})
		if err != nil {
			return nil, nil, err
		}
		if err := dash.Start(ctx); err != nil {
			return nil, nil, fmt.Errorf("dashboard: %w", err)
		}
		mux.Handle("/", dash)
	}
	l, err := net.Listen("tcp", d.opts.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s: %w", d.opts.Listen, err)
	}
	d.log.Info("serving metrics, health and webhook", "address", l.Addr().String())
	return newHTTPServer(mux, defaultServerTimeouts), l, nil
}

// actingAny reports whether this replica acts for any shard.
func (d *Daemon) actingAny() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.acting) > 0
}

func plannerOptions(c *config.Config) planner.Options {
	opts := planner.DefaultOptions()
	if c != nil {
		opts.Clusters = c.ClusterNames()
		opts.AllowRemoteBases = c.AllowRemoteBases
		opts.Limits = c.Limits.Planner()
	}
	return opts
}
