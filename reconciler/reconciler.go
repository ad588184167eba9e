package reconciler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// RenderFunc renders a pipeline's target at an older commit: the known-good release a
// rollback restores, or the target of an execution a restart resumes.
type RenderFunc func(ctx context.Context, commit, pipeline string) (*Target, error)

// Options configure a Reconciler.
type Options struct {
	// Namespace holds the Execution and StageLedger records, in the cluster of Records.
	Namespace string
	// Records and Events are clients of the cluster ebb runs in.
	Records dynamic.Interface
	Events  kubernetes.Interface
	// Clusters resolves the cluster a stage names. A stage whose cluster cannot be resolved
	// fails with the reason; other stages and pipelines go on.
	Clusters func(name string) (*Cluster, error)
	// Render re-renders older commits.
	Render RenderFunc
	// Logger receives the reconciler's logs; default slog.Default().
	Logger *slog.Logger
	// Metrics, from NewMetrics; default unregistered metrics.
	Metrics *Metrics
	// HTTPClient runs health checks; default a client with a 10s timeout.
	HTTPClient *http.Client
	// RetryBackoff is the first wait of an execution whose cluster did not answer before it
	// tries again; it doubles with each attempt, up to an hour. Default 30s.
	RetryBackoff time.Duration
	// Observer, when set, hears of every Execution and StageLedger written, e.g. to keep
	// the Pipeline objects' status up to date.
	Observer RecordObserver
	// MaxConcurrent bounds the executions that run at once (other pipelines' new executions
	// wait for a free slot), so that hundreds of pipelines syncing at once do not overload
	// the API servers, and an execution that runs (verifying, rolling back) is not slowed by
	// hundreds that start. Resumed executions do not wait. Default DefaultMaxConcurrent.
	MaxConcurrent int
	// Owns, when set, says which pipelines this reconciler acts for (a shard of them): Resume
	// continues only their executions, and Sync must be given only their targets. Default:
	// every pipeline.
	Owns func(pipeline string) bool
}

// DefaultMaxConcurrent is the default of Options.MaxConcurrent.
const DefaultMaxConcurrent = 32

// Reconciler runs executions: one at a time per pipeline, different pipelines concurrently.
type Reconciler struct {
	opts    Options
	store   *Store
	log     *slog.Logger
	metrics *Metrics

	mu      sync.Mutex
	workers map[string]*worker
	good    map[string]*Desired // pipeline/stage -> last verified desired release, in memory
	// synced holds, per pipeline/stage, the objects last found in sync (see inSync).
	synced map[string]map[string]string
	// ledgerCache holds the last ledger read or written, by object name (see ledger), and
	// ledgersListed says it holds every ledger there is (Resume listed them).
	ledgerCache     map[string]*StageLedger
	ledgersListed   bool
	ledgerForgotten map[string]bool // read from the API server again, though listed
	wg              sync.WaitGroup
	// slots are Options.MaxConcurrent, handed to the executions that wait for one (slots.go).
	slots *slotQueue
	// driftSlots holds a token per drift check in hand (driftChecksAtOnce).
	driftSlots chan struct{}
}

// New returns a Reconciler. Call Resume once, then Sync for each new commit.
func New(opts Options) *Reconciler {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if opts.RetryBackoff <= 0 {
		opts.RetryBackoff = 30 * time.Second
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = DefaultMaxConcurrent
	}
	store := NewStore(opts.Records, opts.Namespace)
	store.observer = opts.Observer
	return &Reconciler{
		slots:      newSlotQueue(opts.MaxConcurrent),
		driftSlots: make(chan struct{}, driftChecksAtOnce),
		opts:       opts,
		store:      store,
		log:        opts.Logger.With("component", "reconciler"),
		metrics:    opts.Metrics,
		workers:    map[string]*worker{},
		good:       map[string]*Desired{},
		synced:     map[string]map[string]string{},

		ledgerCache: map[string]*StageLedger{}, ledgerForgotten: map[string]bool{},
	}
}

// Store returns the reconciler's record store.
func (r *Reconciler) Store() *Store { return r.store }

// Sync hands each pipeline its target for a new commit. It returns at once; the pipelines'
// workers act on it. A pipeline busy with an execution gets a QUEUED record for the newest
// target that needs one; the newest wins, and older queued ones are CANCELED.
func (r *Reconciler) Sync(ctx context.Context, targets []*Target) {
	for _, t := range targets {
		r.worker(ctx, t.Name()).offer(ctx, t)
	}
}

// Resume continues the executions a previous daemon left open. Call it before the first Sync.
// Per pipeline, the execution that was running continues from its recorded task; the newest
// QUEUED one waits behind it (older queued ones are CANCELED, as they would have been).
func (r *Reconciler) Resume(ctx context.Context) error {
	all, err := r.store.ListExecutions(ctx, "")
	if err != nil {
		return err
	}
	all = slices.DeleteFunc(all, func(x Execution) bool { return !r.owns(x.Spec.Pipeline) })
	r.store.indexExecutions(all)
	if err := r.primeLedgers(ctx); err != nil {
		return err
	}
	active := map[string]*Execution{}
	queued := map[string]*Execution{}
	var superseded, stale []*Execution
	newest := map[string]int{} // pipeline -> number of its newest Deploy execution that ended
	for i := range all {
		if x := &all[i]; x.Spec.Kind == KindDeploy && x.Status.Phase.Terminal() && ran(x) {
			newest[x.Spec.Pipeline] = max(newest[x.Spec.Pipeline], x.Spec.Number)
		}
	}
	for i := range all {
		x := &all[i]
		if x.Status.Phase.Terminal() || x.Spec.Kind != KindDeploy {
			continue
		}
		if x.Status.Phase != Queued && newest[x.Spec.Pipeline] > x.Spec.Number {
			// A newer execution ran while this one's record could not be written: the
			// cluster and the ledgers are that one's now, and resuming would undo them.
			stale = append(stale, x)
			continue
		}
		slot := active
		if x.Status.Phase == Queued {
			slot = queued
		}
		if old := slot[x.Spec.Pipeline]; old != nil {
			superseded = append(superseded, old) // oldest first: the newest stays
		}
		slot[x.Spec.Pipeline] = x
	}
	for _, x := range superseded {
		rr := &run{r: r, x: x, log: r.log.With("execution", x.Spec.DisplayName)}
		if err := rr.setPhase(ctx, Canceled, "superseded while the daemon was down"); err != nil {
			return err
		}
	}
	for _, x := range stale {
		rr := &run{r: r, x: x, log: r.log.With("execution", x.Spec.DisplayName)}
		if err := rr.setPhase(ctx, Canceled, fmt.Sprintf("not resumed: %s ran after it while its record could not be saved",
			DisplayName(x.Spec.Pipeline, newest[x.Spec.Pipeline]))); err != nil {
			return err
		}
	}
	for _, slot := range []map[string]*Execution{active, queued} {
		for pipeline, x := range slot {
			t, err := r.opts.Render(ctx, x.Spec.Commit, pipeline)
			if err != nil {
				rr := &run{r: r, x: x, log: r.log.With("execution", x.Spec.DisplayName)}
				if serr := rr.setPhase(ctx, Failed, fmt.Sprintf("could not resume: render commit %s: %v", short(x.Spec.Commit), err)); serr != nil {
					return serr
				}
				continue
			}
			r.log.Info("resuming execution", "execution", x.Spec.DisplayName, "status", x.Status.Phase)
			r.worker(ctx, pipeline).resume(x, t)
		}
	}
	return nil
}

// owns reports whether the reconciler acts for pipeline (Options.Owns).
func (r *Reconciler) owns(pipeline string) bool {
	return r.opts.Owns == nil || r.opts.Owns(pipeline)
}

// Wait blocks until every worker stopped, after ctx passed to Sync was canceled.
func (r *Reconciler) Wait() { r.wg.Wait() }

// Idle reports whether no worker has work in hand or waiting.
func (r *Reconciler) Idle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.workers {
		w.mu.Lock()
		busy := w.busy || w.next != nil || w.resumed != nil
		w.mu.Unlock()
		if busy {
			return false
		}
	}
	return true
}

func (r *Reconciler) worker(ctx context.Context, pipeline string) *worker {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.workers[pipeline]
	if w == nil {
		w = &worker{r: r, pipeline: pipeline, wake: make(chan struct{}, 1),
			log: r.log.With("pipeline", pipeline)}
		r.workers[pipeline] = w
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			w.loop(ctx)
		}()
	}
	return w
}

// target returns the cluster a stage deploys to.
func (r *Reconciler) target(name string) (*Cluster, error) {
	return r.opts.Clusters(name)
}

// knownGood returns the desired release of a known-good release record: from memory when
// this daemon verified it, else rendered again from its commit.
func (r *Reconciler) knownGood(ctx context.Context, pipeline, stage string, good ReleaseRecord) (*Desired, error) {
	r.mu.Lock()
	d := r.good[pipeline+"/"+stage]
	r.mu.Unlock()
	if d != nil && d.Hash == good.Hash {
		return d, nil
	}
	t, err := r.opts.Render(ctx, good.Commit, pipeline)
	if err != nil {
		return nil, fmt.Errorf("render known-good commit %s of pipeline %q: %w", short(good.Commit), pipeline, err)
	}
	for i := range t.Stages {
		if t.Stages[i].Stage.Name == stage {
			return &t.Stages[i], nil
		}
	}
	return nil, fmt.Errorf("known-good commit %s of pipeline %q has no stage %q", short(good.Commit), pipeline, stage)
}

// remember keeps a verified release in memory, so a rollback to it needs no rendering.
func (r *Reconciler) remember(pipeline string, d *Desired) {
	r.mu.Lock()
	r.good[pipeline+"/"+d.Stage.Name] = d
	r.mu.Unlock()
}

// worker serializes one pipeline's executions.
type worker struct {
	r        *Reconciler
	pipeline string
	log      *slog.Logger
	wake     chan struct{}

	mu      sync.Mutex
	busy    bool
	newest  int64      // the highest Target.Generation offered
	current string     // commit of the execution in hand, while busy
	running *Target    // target of the execution in hand, while busy
	next    *Target    // newest target not yet acted on
	queued  *Execution // QUEUED record of next, if any
	resumed *Execution // an execution to continue before anything else
	resumeT *Target
	// newer is closed when a target of another commit arrives while busy: a drift check in
	// hand gives way to it (checkDrift).
	newer chan struct{}
}

// resume hands the worker an execution found open at start: a running one continues first;
// a queued one waits as the newest target.
func (w *worker) resume(x *Execution, t *Target) {
	w.mu.Lock()
	if x.Status.Phase == Queued {
		w.next, w.queued = t, x
	} else {
		w.resumed, w.resumeT = x, t
	}
	w.mu.Unlock()
	w.poke()
}

// offer makes t the pipeline's newest target. While an execution runs, a target that needs
// one is recorded as QUEUED at once, and the queued execution it supersedes is CANCELED.
func (w *worker) offer(ctx context.Context, t *Target) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t.Generation != 0 && t.Generation < w.newest {
		return // an older commit's target, offered late: the newer one stands
	}
	w.newest = max(w.newest, t.Generation)
	if w.busy && t.Commit.SHA == w.current {
		return // that commit is being executed; a drift check waits for the next resync
	}
	w.next = t
	if w.busy {
		if w.newer != nil && t.Commit.SHA != w.current {
			close(w.newer)
			w.newer = nil
		}
		w.queue(ctx, t)
	}
	w.poke()
}

// queue records t as QUEUED behind the running execution, when it needs an execution by the
// ledgers as they are now; either way it is decided again once the worker is free. A queued
// execution of an older commit is CANCELED: the newest commit wins. Called with w.mu held.
func (w *worker) queue(ctx context.Context, t *Target) {
	if w.queued != nil && w.queued.Spec.Commit == t.Commit.SHA {
		return
	}
	w.cancelQueued(ctx, "superseded by commit "+short(t.Commit.SHA))
	if w.running != nil && sameReleases(w.running, t) {
		return // the execution in hand deploys these very releases: nothing to queue
	}
	if prior, newer, err := w.r.priorRun(ctx, t); err != nil || prior != nil && newer == nil {
		return
	}
	if ledgers, err := w.r.ledgers(ctx, t); err != nil || !decide(t, ledgers).deploy {
		return
	}
	x := &Execution{Spec: ExecutionSpec{Pipeline: t.Name(), Kind: KindDeploy, Commit: t.Commit.SHA, CommitMessage: firstLine(t.Commit.Message)}}
	x.Status.Phase = Queued
	x.Status.Comment = "waiting for the running execution to finish"
	x.Status.recordChange(metav1.Now())
	created, err := w.r.store.CreateExecution(ctx, x)
	if err != nil {
		w.log.Error("record queued execution", "err", err)
		return
	}
	w.queued = created
}

// sameReleases reports whether a and b deploy the same release with the same stage
// definition to each stage: a commit that changes nothing a pipeline deploys (a README, or
// another pipeline's files).
func sameReleases(a, b *Target) bool {
	if len(a.Stages) != len(b.Stages) {
		return false
	}
	for i := range a.Stages {
		x, y := &a.Stages[i], &b.Stages[i]
		if x.Hash != y.Hash || stageFingerprint(x.Stage) != stageFingerprint(y.Stage) {
			return false
		}
	}
	return true
}

// cancelQueued ends the queued execution, if any, CANCELED. Called with w.mu held.
func (w *worker) cancelQueued(ctx context.Context, why string) {
	if w.queued == nil {
		return
	}
	old := &run{r: w.r, x: w.queued, log: w.log.With("execution", w.queued.Spec.DisplayName)}
	if err := old.setPhase(ctx, Canceled, why); err != nil {
		w.log.Error("cancel queued execution", "execution", w.queued.Spec.DisplayName, "err", err)
	}
	w.queued = nil
}

func (w *worker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *worker) loop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		}
		for w.step(ctx) {
			if ctx.Err() != nil {
				return
			}
		}
	}
}

// step acts on the worker's next piece of work; it returns false when there is none.
func (w *worker) step(ctx context.Context) bool {
	w.mu.Lock()
	x, t := w.resumed, w.resumeT
	w.resumed, w.resumeT = nil, nil
	if x == nil {
		t = w.next
		if w.queued != nil && t != nil && w.queued.Spec.Commit != t.Commit.SHA {
			w.cancelQueued(ctx, "superseded by commit "+short(t.Commit.SHA))
		}
		x = w.queued
		w.next, w.queued = nil, nil
	}
	if t == nil {
		w.mu.Unlock()
		return false
	}
	w.busy, w.current, w.running = true, t.Commit.SHA, t
	newer := make(chan struct{})
	w.newer = newer
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.busy, w.running = false, nil
		w.mu.Unlock()
	}()

	if err := w.r.execute(ctx, x, t, newer); err != nil && !errors.Is(err, errParked) && ctx.Err() == nil {
		w.log.Error("execution", "commit", short(t.Commit.SHA), "err", err)
	}
	return true
}

// execute decides what t means for its pipeline and runs the execution it needs, reusing
// the record x (QUEUED, or open from before a restart) when given.
func (r *Reconciler) execute(ctx context.Context, x *Execution, t *Target, newer <-chan struct{}) error {
	log := r.log.With("pipeline", t.Name(), "commit", short(t.Commit.SHA))
	resuming := x != nil && x.Status.Phase != Queued
	var slot *execSlot // a resumed execution was running: it does not wait for a slot
	if !resuming {
		slot = &execSlot{r: r}
		defer slot.free()
	}
	var d decision
	if !resuming {
		ledgers, err := r.ledgers(ctx, t)
		if err != nil {
			return err
		}
		d = decide(t, ledgers)
		slot.priority = priorityOf(t, ledgers)
		if err := r.recordWriteBack(ctx, t, d); err != nil { // decide.go
			return err
		}
		if !d.deploy {
			log.Debug("nothing to run", "reason", d.reason)
			if x != nil {
				rr := &run{r: r, x: x, log: log}
				return rr.setPhase(ctx, Canceled, "nothing to run: "+d.reason)
			}
			return r.checkDrift(ctx, t, ledgers, newer)
		}
		// One commit never runs twice, also across restarts: a failure of the cluster is
		// waited out by the execution itself (untilClusterAnswers).
		comment := ""
		if err := slot.take(ctx); err != nil {
			return err
		}
		if x == nil {
			prior, newer, err := r.priorRun(ctx, t)
			if err != nil || prior != nil && newer == nil {
				return err
			}
			if prior != nil {
				comment = movedBack(t, prior, newer)
				log.Info("the branch moved back to a commit that ran before", "previous", prior.Spec.DisplayName, "since", newer.Spec.DisplayName)
			}
			// Its record is created as it starts (run.start), with its first status.
			x = &Execution{Spec: ExecutionSpec{Pipeline: t.Name(), Kind: KindDeploy, Commit: t.Commit.SHA, CommitMessage: firstLine(t.Commit.Message)}}
		}
		x.Status.Comment = comment
	}
	if x.Name != "" {
		log = log.With("execution", x.Spec.DisplayName)
	}
	rr := &run{r: r, x: x, log: log, resumed: resuming, slot: slot}
	if err := rr.deploy(ctx, t, d); err != nil {
		return err
	}
	for i := range t.Stages {
		if rec := rr.stage(t.Stages[i].Stage.Name); rec.Status == Completed && rec.ReleaseHash == t.Stages[i].Hash {
			r.remember(t.Name(), &t.Stages[i])
		}
	}
	return nil
}

// retryMax bounds the back-off of an execution waiting for its cluster.
const retryMax = time.Hour

// ran reports whether an execution counts as its commit's run: anything but one canceled
// before it started (a queued execution a newer commit superseded). An execution canceled
// while it ran, such as one whose approval expired, ran: its commit is not tried again.
func ran(x *Execution) bool { return x.Status.Phase != Canceled || x.Status.StartedAt != nil }

// priorRun returns the newest Deploy execution that ran t's commit, if any, and the newest
// one that ran another commit after it, if any. A commit runs once: but when another commit
// ran since, the branch moved back to t's commit (a reset and a force-push), and the stage
// must follow it again.
func (r *Reconciler) priorRun(ctx context.Context, t *Target) (prior, newer *Execution, err error) {
	all, err := r.store.executionsOf(ctx, t.Name())
	if err != nil {
		return nil, nil, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		x := &all[i]
		if x.Spec.Kind != KindDeploy || !ran(x) {
			continue
		}
		if x.Spec.Commit == t.Commit.SHA {
			return x, newer, nil
		}
		if newer == nil && x.Status.StartedAt != nil {
			newer = x // a QUEUED execution of a later commit has not run: the branch did not move back
		}
	}
	return nil, nil, nil
}

// movedBack says that the branch moved back to t's commit.
func movedBack(t *Target, prior, newer *Execution) string {
	return fmt.Sprintf("the branch moved back to commit %s (reset or rewritten), which %s ran before; %s ran commit %s since",
		short(t.Commit.SHA), prior.Spec.DisplayName, newer.Spec.DisplayName, short(newer.Spec.Commit))
}

// ledgers returns the status of each stage's ledger, shared and read-only: change one with
// updateLedger.
func (r *Reconciler) ledgers(ctx context.Context, t *Target) (map[string]*StageLedgerStatus, error) {
	out := make(map[string]*StageLedgerStatus, len(t.Stages))
	for _, d := range t.Stages {
		l, err := r.sharedLedger(ctx, t.Name(), d.Stage.Name)
		if err != nil {
			return nil, err
		}
		out[d.Stage.Name] = &l.Status
	}
	return out, nil
}

// event records a Kubernetes Event on an execution. Events are best effort: a failure to
// record one is logged, never fatal.
func (r *Reconciler) event(ctx context.Context, x *Execution, phase Status, message string) {
	if r.opts.Events == nil {
		return
	}
	typ := "Normal"
	if phase == Failed || phase == RollingBack || phase == RollbackFailed || phase == RollbackCompleted {
		typ = "Warning"
	}
	recordEvent(ctx, r.opts.Events, r.log, eventRef{
		apiVersion: Group + "/" + Version, kind: "Execution", namespace: x.Namespace, name: x.Name, uid: x.UID,
	}, typ, string(phase), message)
}

// StaticClusters resolves cluster names from a fixed map.
func StaticClusters(m map[string]*Cluster) func(string) (*Cluster, error) {
	return func(name string) (*Cluster, error) {
		if c := m[name]; c != nil {
			return c, nil
		}
		return nil, &UnknownClusterError{Name: name}
	}
}

func firstLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}
