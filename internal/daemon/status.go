package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/reconciler"
)

// statusDebounce is how long the status writer waits after a change for more, so a burst
// (every pipeline of a new commit, the task writes of an execution) costs one pass.
const statusDebounce = 100 * time.Millisecond

// statusWriter keeps one Pipeline object per pipeline in Git up to date. It computes each
// from what it keeps in memory: the view of the last planned commit, the newest Deploy
// execution of each pipeline, and each stage's ledger, which the reconciler reports as it
// writes them (it is the reconciler's RecordObserver). It reads the records when the daemon
// starts leading and then only its own writes, and writes a Pipeline only when it changed:
// an idle daemon writes nothing.
type statusWriter struct {
	store  *reconciler.Store
	events kubernetes.Interface
	log    *slog.Logger
	wake   chan struct{}
	// owns says which pipelines' objects this writer keeps (its shard's); nil: all.
	owns func(pipeline string) bool

	refreshMu sync.Mutex // one refresh at a time

	mu       sync.Mutex
	recorded bool // executions and ledgers were read since leading began
	listed   bool // the Pipeline objects were read
	view     *gitView
	newest   map[string]*reconciler.Execution              // by pipeline name
	ledgers  map[string]map[string]*reconciler.StageLedger // by pipeline name, then stage
	objects  map[string]*reconciler.Pipeline               // by object name, as stored
	dirty    map[string]bool                               // object names to compute again
	all      bool                                          // compute every pipeline again
	fresh    map[string]bool                               // records written while they were being read
	// planned remembers, by object name, what the pipeline looked like in Git (its file, its
	// planned releases, its errors) and the commit that made it so: a commit that changes
	// none of that (a README) moves no Pipeline's LastPlannedCommit, and writes nothing.
	planned map[string]plannedAt
}

// plannedAt is a pipeline as planned, and the commit from which it has been so.
type plannedAt struct {
	sig    string
	commit *reconciler.CommitRef
}

func newStatusWriter(store *reconciler.Store, events kubernetes.Interface, owns func(string) bool, log *slog.Logger) *statusWriter {
	s := &statusWriter{store: store, events: events, owns: owns, log: log.With("component", "status"), wake: make(chan struct{}, 1)}
	s.reset()
	return s
}

// reset forgets the records, to read them again: the daemon starts leading, and another
// leader may have written them since.
func (s *statusWriter) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recorded, s.listed = false, false
	s.newest = map[string]*reconciler.Execution{}
	s.ledgers = map[string]map[string]*reconciler.StageLedger{}
	s.objects = map[string]*reconciler.Pipeline{}
	s.dirty, s.all = map[string]bool{}, true
}

// ExecutionWritten keeps the newest Deploy execution of each pipeline.
func (s *statusWriter) ExecutionWritten(x *reconciler.Execution) {
	if x.Spec.Kind != reconciler.KindDeploy {
		return // a rollback's parent execution is written too, and says how it ended
	}
	s.mu.Lock()
	if old := s.newest[x.Spec.Pipeline]; old == nil || x.Spec.Number >= old.Spec.Number {
		s.newest[x.Spec.Pipeline] = conditionsOf(x)
	}
	s.markFresh("x/" + x.Spec.Pipeline)
	s.dirty[reconciler.ObjectName(x.Spec.Pipeline)] = true
	s.mu.Unlock()
	s.poke()
}

// conditionsOf keeps of x what a Pipeline's conditions read (pipelineFacts): its spec, phase,
// failure, comment and each stage's release, not its tasks and history, which are most of a
// record.
func conditionsOf(x *reconciler.Execution) *reconciler.Execution {
	out := &reconciler.Execution{Spec: x.Spec, Status: reconciler.ExecutionStatus{
		Phase: x.Status.Phase, Failure: x.Status.Failure, Comment: x.Status.Comment,
	}}
	for _, st := range x.Status.Stages {
		out.Status.Stages = append(out.Status.Stages, reconciler.StageRecord{Name: st.Name, ReleaseHash: st.ReleaseHash})
	}
	return out
}

// LedgerWritten keeps each stage's ledger.
func (s *statusWriter) LedgerWritten(l *reconciler.StageLedger) {
	s.mu.Lock()
	s.putLedger(l)
	s.markFresh("l/" + l.Spec.Pipeline + "/" + l.Spec.Stage)
	s.dirty[reconciler.ObjectName(l.Spec.Pipeline)] = true
	s.mu.Unlock()
	s.poke()
}

// putLedger keeps what a Pipeline shows of a ledger: its current, last known-good and
// failed releases, shared with l (which nobody changes). Called with s.mu held.
func (s *statusWriter) putLedger(l *reconciler.StageLedger) {
	if s.ledgers[l.Spec.Pipeline] == nil {
		s.ledgers[l.Spec.Pipeline] = map[string]*reconciler.StageLedger{}
	}
	s.ledgers[l.Spec.Pipeline][l.Spec.Stage] = &reconciler.StageLedger{Spec: l.Spec, Status: reconciler.StageLedgerStatus{
		Current: l.Status.Current, LastKnownGood: l.Status.LastKnownGood, Failed: l.Status.Failed,
	}}
}

// markFresh notes a record written while the records are being read, so the (maybe older)
// copy read does not replace it. Called with s.mu held.
func (s *statusWriter) markFresh(key string) {
	if s.fresh != nil {
		s.fresh[key] = true
	}
}

// setView makes v the view of the last planned commit.
func (s *statusWriter) setView(v *gitView) {
	s.mu.Lock()
	s.view, s.all = v, true
	s.mu.Unlock()
	s.poke()
}

// touchAll computes every pipeline again, as after a resync.
func (s *statusWriter) touchAll() {
	s.mu.Lock()
	s.all = true
	s.mu.Unlock()
	s.poke()
}

func (s *statusWriter) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run refreshes the Pipeline objects after each change until ctx ends. After a failed
// refresh it waits a while before the next, whatever changes meanwhile.
func (s *statusWriter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		}
		if !sleep(ctx, statusDebounce) {
			return
		}
		if err := s.refresh(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("update pipeline status; trying again in 10s", "err", err)
			if !sleep(ctx, 10*time.Second) {
				return
			}
			s.poke()
		}
	}
}

// sleep waits for d, and reports false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// refresh writes every Pipeline object that changed since the last refresh.
func (s *statusWriter) refresh(ctx context.Context) error {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	if err := s.read(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	if s.view == nil {
		s.mu.Unlock()
		return nil // nothing planned yet: nothing is known of Git
	}
	keys := s.dirtyKeys()
	type write struct {
		key        string
		want, have *reconciler.Pipeline
	}
	var writes []write
	for _, key := range keys {
		have := s.objects[key]
		if want := s.desired(key, have); want != nil {
			writes = append(writes, write{key, want, have})
		}
	}
	s.mu.Unlock()

	var failed []string
	var firstErr error
	for _, w := range writes {
		saved, err := s.store.SavePipeline(ctx, w.want, w.have)
		if err != nil {
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) || apierrors.IsAlreadyExists(err) {
				s.mu.Lock()
				s.listed = false // someone else changed it: read them all again
				s.mu.Unlock()
			}
			failed = append(failed, w.key)
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		saved.ManagedFields = nil // nothing reads them, and an update without them keeps them
		s.mu.Lock()
		s.objects[w.key] = saved
		s.mu.Unlock()
		s.announce(ctx, w.have, saved)
	}
	if len(failed) > 0 {
		s.mu.Lock()
		for _, key := range failed {
			s.dirty[key] = true
		}
		s.mu.Unlock()
		return fmt.Errorf("%d pipelines: %w", len(failed), firstErr)
	}
	return nil
}

// dirtyKeys returns the object names to compute, and forgets them. Called with s.mu held.
func (s *statusWriter) dirtyKeys() []string {
	keys := s.dirty
	if s.all {
		keys = map[string]bool{}
		for k, gp := range s.view.pipelines {
			if s.keeps(gp.name) {
				keys[k] = true
			}
		}
		for k, o := range s.objects {
			if s.keeps(o.Spec.Pipeline) {
				keys[k] = true
			}
		}
	}
	s.dirty, s.all = map[string]bool{}, false
	out := make([]string, 0, len(keys))
	for k := range keys {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// keeps reports whether pipeline's object is this writer's to keep.
func (s *statusWriter) keeps(pipeline string) bool { return s.owns == nil || s.owns(pipeline) }

// read reads what is not known yet: the executions and ledgers once per leadership, the
// Pipeline objects then and after a write found them changed.
func (s *statusWriter) read(ctx context.Context) error {
	s.mu.Lock()
	recorded, listed := s.recorded, s.listed
	if !recorded {
		s.fresh = map[string]bool{}
	}
	s.mu.Unlock()
	if !recorded {
		execs, err := s.store.ListExecutions(ctx, "")
		if err != nil {
			return err
		}
		ledgers, err := s.store.ListLedgers(ctx, "")
		if err != nil {
			return err
		}
		s.mu.Lock()
		for i := range execs {
			x := &execs[i]
			if x.Spec.Kind != reconciler.KindDeploy || s.fresh["x/"+x.Spec.Pipeline] || !s.keeps(x.Spec.Pipeline) {
				continue
			}
			if old := s.newest[x.Spec.Pipeline]; old == nil || x.Spec.Number > old.Spec.Number {
				s.newest[x.Spec.Pipeline] = conditionsOf(x)
			}
		}
		for i := range ledgers {
			if !s.fresh["l/"+ledgers[i].Spec.Pipeline+"/"+ledgers[i].Spec.Stage] && s.keeps(ledgers[i].Spec.Pipeline) {
				s.putLedger(&ledgers[i])
			}
		}
		s.recorded, s.fresh, s.all = true, nil, true
		s.mu.Unlock()
	}
	if !listed {
		list, err := s.store.ListPipelines(ctx)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.objects = map[string]*reconciler.Pipeline{}
		for i := range list {
			list[i].ManagedFields = nil
			s.objects[list[i].Name] = &list[i]
		}
		s.listed, s.all = true, true
		s.mu.Unlock()
	}
	return nil
}

// desired computes the Pipeline object of key from the view, the records and have, the
// object as stored (nil when there is none). It returns nil when there is nothing to show:
// no such pipeline in Git and no object. Called with s.mu held.
func (s *statusWriter) desired(key string, have *reconciler.Pipeline) *reconciler.Pipeline {
	v := s.view
	gp := v.pipelines[key]
	if gp == nil && have == nil {
		return nil
	}
	var want *reconciler.Pipeline
	if have != nil {
		want = have.DeepCopy()
	} else {
		want = s.store.NewPipeline(gp.name)
	}
	st := &want.Status
	stages := st.Stages
	if gp != nil {
		if want.Spec.Pipeline != gp.name {
			want.Labels = s.store.NewPipeline(gp.name).Labels
		}
		want.Spec.Pipeline, want.Spec.File = gp.name, gp.file
		if gp.enabled != nil {
			want.Spec.Enabled = *gp.enabled
		}
		st.RemovedFromGit = nil
		st.LastPlannedCommit = s.plannedCommit(key, gp, st.LastPlannedCommit)
		if gp.stages != nil {
			stages = gp.stages
		}
		st.LastError = lastError(gp, st.LastPlannedCommit.SHA)
	} else {
		if st.RemovedFromGit == nil {
			st.RemovedFromGit = reconciler.NewCommitRef(v.commit, v.at)
		}
		st.LastError = nil
	}
	st.Stages = s.withLedgers(want.Spec.Pipeline, stages)
	commit := v.commit
	if gp != nil && st.LastPlannedCommit != nil {
		commit = st.LastPlannedCommit.SHA
	}
	facts := pipelineFacts{
		name: want.Spec.Pipeline, file: want.Spec.File, enabled: want.Spec.Enabled, commit: commit,
		git: gp, removed: st.RemovedFromGit, stages: st.Stages, newest: s.newest[want.Spec.Pipeline],
	}
	facts.conditions().Apply(&st.Conditions, want.Generation)
	return want
}

// plannedCommit returns the commit from which pipeline key has looked in Git as it does in
// the view (file, enabled, stages, planned releases, errors): the view's commit when any of
// that changed, else the one recorded before (have, when the daemon planned nothing since it
// started and have says the same). Called with s.mu held.
func (s *statusWriter) plannedCommit(key string, gp *gitPipeline, have *reconciler.CommitRef) *reconciler.CommitRef {
	v := s.view
	sig := gp.signature()
	if s.planned == nil {
		s.planned = map[string]plannedAt{}
	}
	if p, ok := s.planned[key]; ok && p.sig == sig {
		return p.commit
	}
	ref := reconciler.NewCommitRef(v.commit, v.at)
	s.planned[key] = plannedAt{sig: sig, commit: ref}
	return ref
}

// withLedgers returns stages (or, when none are known, the stages that have a ledger) with
// the releases of their ledgers. Called with s.mu held.
func (s *statusWriter) withLedgers(pipeline string, stages []reconciler.PipelineStage) []reconciler.PipelineStage {
	ledgers := s.ledgers[pipeline]
	if len(stages) == 0 {
		for name := range ledgers {
			stages = append(stages, reconciler.PipelineStage{Name: name})
		}
		sort.Slice(stages, func(i, j int) bool { return stages[i].Name < stages[j].Name })
	}
	out := make([]reconciler.PipelineStage, len(stages))
	for i, st := range stages {
		out[i] = reconciler.PipelineStage{Name: st.Name, Cluster: st.Cluster, Namespace: st.Namespace}
		if l := ledgers[st.Name]; l != nil {
			out[i].Current, out[i].LastKnownGood, out[i].Quarantined = l.Status.Current, l.Status.LastKnownGood, l.Status.Failed
		}
	}
	return out
}

// lastError is the located error of a pipeline that could not be planned at commit.
func lastError(gp *gitPipeline, commit string) *reconciler.PipelineError {
	if len(gp.errs) == 0 {
		return nil
	}
	first := gp.errs[0]
	return &reconciler.PipelineError{
		Reason: gp.reason, Message: gp.errs.Error(), File: first.File, Line: first.Pos.Line, Column: first.Pos.Col, Commit: commit,
	}
}

// announce records an Event on the Pipeline for each condition whose status or reason
// changed: Normal when the pipeline is ready or deploying, Warning when it needs a person or
// a release failed. Two conditions that say the same thing make one Event.
func (s *statusWriter) announce(ctx context.Context, have, saved *reconciler.Pipeline) {
	if s.events == nil {
		return
	}
	var old []metav1.Condition
	if have != nil {
		old = have.Status.Conditions
	}
	reconciling := meta.IsStatusConditionTrue(saved.Status.Conditions, reconciler.ConditionReconciling)
	said := map[string]bool{}
	for _, typ := range []string{reconciler.ConditionReady, reconciler.ConditionReconciling, reconciler.ConditionStalled} {
		c := meta.FindStatusCondition(saved.Status.Conditions, typ)
		if c == nil {
			continue
		}
		if o := meta.FindStatusCondition(old, typ); o != nil && o.Status == c.Status && o.Reason == c.Reason {
			continue
		}
		if said[c.Reason+"\x00"+c.Message] {
			continue
		}
		said[c.Reason+"\x00"+c.Message] = true
		typ := corev1.EventTypeWarning
		if reconciling || c.Reason == reasonNotEnabled || meta.IsStatusConditionTrue(saved.Status.Conditions, reconciler.ConditionReady) {
			typ = corev1.EventTypeNormal
		}
		reconciler.PipelineEvent(ctx, s.events, s.log, saved, typ, c.Reason, c.Message)
	}
}

// stageNames lists the stages' names for messages: "dev, prod".
func stageNames(stages []reconciler.PipelineStage) string {
	names := make([]string, len(stages))
	for i, st := range stages {
		names[i] = st.Name
	}
	return strings.Join(names, ", ")
}
