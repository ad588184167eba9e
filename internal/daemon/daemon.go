// Package daemon wires ebb's parts into the long-running reconciler that `ebb run` starts:
// the Git source feeds snapshots to the planner, whose releases the reconciler rolls out,
// while an HTTP server exposes metrics, health and the push webhook. Only the leader (a
// Lease) acts; other replicas wait to take over.
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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"ebb.dev/ebb/gitsource"
	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/internal/dashboard"
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
	// LeaderElection makes replicas elect one leader with a Lease; off, this process acts
	// alone.
	LeaderElection bool
	// Identity names this replica in the Lease; default the host name.
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
	rec      *reconciler.Reconciler
	clusters *clusters
	status   *statusWriter
	reg      *prometheus.Registry
	kube     *kubeRequests
	leading  atomic.Bool
	polled   atomic.Bool
	// snapshots numbers the snapshots planned, so that a pipeline takes no target of an
	// older commit after a newer one (see reconciler.Target.Generation).
	snapshots atomic.Int64

	mu      sync.Mutex
	targets []*reconciler.Target // of the last snapshot, re-synced for drift
}

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
	if !opts.LeaderElection {
		return d.lead(ctx)
	}
	return d.elect(ctx)
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
	records, err := dynamic.NewForConfig(opts.Home)
	if err != nil {
		return nil, err
	}
	events, err := kubernetes.NewForConfig(opts.Home)
	if err != nil {
		return nil, err
	}
	clusters := newClusters(opts.Config, opts.Home, events, kube, log)
	clusters.qps, clusters.burst = opts.KubeQPS, opts.KubeBurst
	d := &Daemon{
		opts: opts, log: log, source: source, reg: reg, kube: kube, clusters: clusters,
		renderer: planner.NewRenderer(plannerOptions(opts.Config)),
		status:   newStatusWriter(reconciler.NewStore(records, opts.Namespace), events, log),
	}
	d.rec = reconciler.New(reconciler.Options{
		Namespace: opts.Namespace, Records: records, Events: events, Clusters: clusters.get,
		Render: d.renderAt, Logger: log, Metrics: reconciler.NewMetrics(reg), RetryBackoff: opts.RetryBackoff,
		MaxConcurrent: opts.MaxConcurrent,
		Observer:      d.status,
	})
	return d, nil
}

// lead does the leader's work: resume open executions, then follow the repository, keeping
// the Pipeline objects up to date.
func (d *Daemon) lead(ctx context.Context) error {
	d.leading.Store(true)
	defer d.leading.Store(false)
	// The records as they are before Resume writes any: the status writer hears of every
	// write after that.
	d.status.reset()
	if err := d.status.read(ctx); err != nil {
		d.log.Warn("read records for the pipeline status; trying again later", "err", err)
	}
	go d.status.run(ctx)
	// Notifications and write-back follow the execution records (closeloop.go).
	go d.closeLoop(ctx)
	go d.clusters.watch(ctx) // rotated kubeconfig Secrets
	if err := d.rec.Resume(ctx); err != nil {
		return fmt.Errorf("resume executions: %w", err)
	}
	go d.resync(ctx)
	go d.watchReconcileRequests(ctx) // reconcile.go
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
	err := d.source.Run(ctx, func(snap *gitsource.Snapshot) { d.onSnapshot(ctx, snap) })
	d.rec.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// elect runs lead while this replica holds the Lease.
func (d *Daemon) elect(ctx context.Context) error {
	id := d.opts.Identity
	if id == "" {
		id, _ = os.Hostname()
	}
	cs, err := kubernetes.NewForConfig(d.opts.Home)
	if err != nil {
		return err
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: "ebb-leader", Namespace: d.opts.Namespace},
		Client:     cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	var leadErr error
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		ReleaseOnCancel: true,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		Name:            "ebb",
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				d.log.Info("leading", "identity", id)
				leadErr = d.lead(ctx)
			},
			OnStoppedLeading: func() { d.log.Info("stopped leading", "identity", id) },
			OnNewLeader: func(leader string) {
				if leader != id {
					d.log.Info("following", "leader", leader)
				}
			},
		},
	})
	return leadErr
}

// onSnapshot plans every pipeline of a new commit and hands each pipeline's target to the
// reconciler as soon as it renders: a pipeline slow to render delays no other's release.
func (d *Daemon) onSnapshot(ctx context.Context, snap *gitsource.Snapshot) {
	d.polled.Store(true)
	gen := d.snapshots.Add(1)
	ready := make(chan *reconciler.Target)
	var (
		targets []*reconciler.Target
		view    *gitView
	)
	go func() {
		defer close(ready)
		targets, view = d.plan(snap, func(t *reconciler.Target) { ready <- t })
	}()
	for t := range ready {
		t.Generation = gen
		d.rec.Sync(ctx, []*reconciler.Target{t})
	}
	d.mu.Lock()
	d.targets = targets
	d.mu.Unlock()
	if view != nil {
		d.status.setView(view)
	}
}

// resync hands the last targets to the reconciler again every Resync, to restore drift.
func (d *Daemon) resync(ctx context.Context) {
	t := time.NewTicker(d.opts.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.mu.Lock()
			targets := d.targets
			d.mu.Unlock()
			d.rec.Sync(ctx, targets)
			d.status.touchAll()
		}
	}
}

// plan loads and renders the enabled pipelines of snap, using both cores, and calls ready
// with each pipeline's target as soon as all its stages rendered (from several goroutines,
// one call at a time). A pipeline with an error is logged with its location and skipped; the
// others go on. plan returns every target, in file order, and the view of what snap holds of
// every pipeline, errors included, for the Pipeline objects; nil when the repository could
// not be read.
func (d *Daemon) plan(snap *gitsource.Snapshot, ready func(*reconciler.Target)) ([]*reconciler.Target, *gitView) {
	log := d.log.With("commit", snap.ShortCommit())
	repo := planner.NewRepo(snap.FS)
	pipelines, loadErr := planner.Load(repo, plannerOptions(d.opts.Config))
	if loadErr != nil {
		log.Error("pipelines with errors are skipped", "err", loadErr)
	}
	var enabled []*planner.Pipeline
	for _, p := range pipelines {
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
		// A follower is ready: it serves and waits. A leader is ready once it read Git.
		if d.leading.Load() && !d.polled.Load() {
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
		hook, err := gitsource.NewWebhook(d.source, wopts)
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

func plannerOptions(c *config.Config) planner.Options {
	opts := planner.DefaultOptions()
	if c != nil {
		opts.Clusters = c.ClusterNames()
		opts.AllowRemoteBases = c.AllowRemoteBases
		opts.Limits = c.Limits.Planner()
	}
	return opts
}
