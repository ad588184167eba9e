package dashboard

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"ebb.dev/ebb/internal/redact"
	"ebb.dev/ebb/reconciler"
)

// pipelineView is one pipeline's page.
type pipelineView struct {
	page
	Name string
	// Object is the Pipeline object ebb writes, nil when it is missing or unreadable (Note says
	// why).
	Object     *reconciler.Pipeline
	ObjectNote string
	Ready      *metav1.Condition
	Error      *reconciler.PipelineError
	// ErrorLines are the error's `file:line:col: message` lines.
	ErrorLines []string
	Stages     []ledgerView
	LedgerNote string
	Plot       plot
	DORA       dora
	Rows       []row
}

// ledgerView is one stage's releases.
type ledgerView struct {
	Name, Cluster, Namespace string
	Current, LastKnownGood   *releaseView
	Stalled                  *releaseView
	Verified, Quarantined    []releaseView
}

// releaseView is a release of a stage, with the execution that ran it linked.
type releaseView struct {
	Commit, ShortCommit, Hash string
	Images                    []string
	Execution, ExecutionName  string
	At                        *metav1.Time
	Reason, RestoredBy        string
}

func (s *Server) handlePipeline(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	v := &pipelineView{
		page: page{Title: name, Namespace: s.opts.Namespace, ReadOnly: s.opts.ReadOnly,
			Live: "/events?view=pipeline&name=" + name, Self: "/pipelines/" + name},
		Name: name,
	}
	now := s.opts.Now()
	var executions []*reconciler.Execution
	for _, x := range s.feed.list() {
		if x.Spec.Pipeline == name {
			executions = append(executions, x)
		}
	}
	s.addPipelineObject(r, v)
	s.addLedgers(r, v)
	if v.Object == nil && len(v.Stages) == 0 && len(executions) == 0 {
		s.errorPage(w, http.StatusNotFound, "Not found", fmt.Sprintf("pipeline %s has no Pipeline object, ledger or execution in namespace %s", name, s.opts.Namespace))
		return
	}
	for i, x := range executions {
		if i == 50 {
			break
		}
		v.Rows = append(v.Rows, s.rowOf(x, now))
	}
	v.Plot = plotOf(executions, v.stageNames(), now)
	v.DORA = doraOf(executions, now)
	s.render(w, http.StatusOK, "pipeline", v)
}

// stageNames are the pipeline's stages, in the Pipeline object's order when there is one.
func (v *pipelineView) stageNames() []string {
	var names []string
	if v.Object != nil {
		for _, st := range v.Object.Status.Stages {
			names = append(names, st.Name)
		}
	}
	for _, l := range v.Stages {
		if !slices.Contains(names, l.Name) {
			names = append(names, l.Name)
		}
	}
	return names
}

// addPipelineObject reads the Pipeline object as the user.
func (s *Server) addPipelineObject(r *http.Request, v *pipelineView) {
	u, err := s.opts.Client.Resource(reconciler.PipelineResource).Namespace(s.opts.Namespace).Get(r.Context(), reconciler.ObjectName(v.Name), metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		v.ObjectNote = "ebb has written no Pipeline object for it (the daemon has not planned it yet, or it predates Pipeline objects)."
		return
	case err != nil:
		v.ObjectNote = "Its Pipeline object cannot be read as you: " + apiMessage(err)
		return
	}
	p := &reconciler.Pipeline{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, p); err != nil {
		v.ObjectNote = "Its Pipeline object cannot be read: " + err.Error()
		return
	}
	v.Object = p
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == "Ready" {
			v.Ready = &p.Status.Conditions[i]
		}
	}
	if e := p.Status.LastError; e != nil {
		v.Error = e
		for _, line := range strings.Split(redact.Text(e.Message), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				v.ErrorLines = append(v.ErrorLines, line)
			}
		}
	}
}

// addLedgers reads the pipeline's StageLedgers as the user.
func (s *Server) addLedgers(r *http.Request, v *pipelineView) {
	ledgers, err := s.store.ListLedgers(r.Context(), v.Name)
	if err != nil {
		v.LedgerNote = "Its stage ledgers cannot be read as you: " + apiMessage(err)
		return
	}
	where := map[string][2]string{}
	order := map[string]int{}
	if v.Object != nil {
		for i, st := range v.Object.Status.Stages {
			where[st.Name] = [2]string{st.Cluster, st.Namespace}
			order[st.Name] = i + 1
		}
	}
	slices.SortStableFunc(ledgers, func(a, b reconciler.StageLedger) int {
		oa, ob := order[a.Spec.Stage], order[b.Spec.Stage]
		if oa == 0 {
			oa = 1 << 20
		}
		if ob == 0 {
			ob = 1 << 20
		}
		if oa != ob {
			return oa - ob
		}
		return strings.Compare(a.Spec.Stage, b.Spec.Stage)
	})
	for _, l := range ledgers {
		lv := ledgerView{Name: l.Spec.Stage, Cluster: where[l.Spec.Stage][0], Namespace: where[l.Spec.Stage][1],
			Current: s.release(l.Status.Current), LastKnownGood: s.release(l.Status.LastKnownGood), Stalled: s.release(l.Status.Stalled)}
		for i := range l.Status.Verified {
			lv.Verified = append(lv.Verified, *s.release(&l.Status.Verified[i]))
		}
		for i := range l.Status.Failed {
			lv.Quarantined = append(lv.Quarantined, *s.release(&l.Status.Failed[i]))
		}
		v.Stages = append(v.Stages, lv)
	}
}

func (s *Server) release(r *reconciler.ReleaseRecord) *releaseView {
	if r == nil {
		return nil
	}
	rv := &releaseView{Commit: r.Commit, ShortCommit: r.ShortCommit, Hash: r.Hash, Images: r.Images, ExecutionName: r.Execution,
		Execution: s.displayOf(r.Execution), At: r.At, Reason: redact.Text(r.Reason), RestoredBy: r.RestoredBy}
	if rv.ShortCommit == "" && len(r.Commit) > 7 {
		rv.ShortCommit = r.Commit[:7]
	}
	if len(rv.Hash) > 12 {
		rv.Hash = rv.Hash[:12]
	}
	return rv
}

// dora are the four-keys figures the executions allow: deployment frequency, change failure
// rate and time to restore, over the executions the namespace keeps.
type dora struct {
	// Deploys is the number of completed deploy executions, over Window.
	Deploys   int
	Window    string
	Frequency string
	// Failures of Changes: deploy executions that ended failed or rolled back, of all that
	// ended.
	Failures, Changes int
	FailureRate       string
	// Restores is the number of failures followed by a restore, and TimeToRestore their
	// median time from the failing task's end to the restore.
	Restores      int
	TimeToRestore string
}

func doraOf(executions []*reconciler.Execution, now time.Time) dora {
	var d dora
	var first time.Time
	byName := map[string]*reconciler.Execution{}
	var deploys []*reconciler.Execution
	for _, x := range executions {
		byName[x.Name] = x
		if x.Spec.Kind != reconciler.KindDeploy {
			continue
		}
		deploys = append(deploys, x)
		if c := x.CreationTimestamp.Time; first.IsZero() || c.Before(first) {
			first = c
		}
	}
	slices.SortFunc(deploys, func(a, b *reconciler.Execution) int { return a.CreationTimestamp.Compare(b.CreationTimestamp.Time) })
	var restores []time.Duration
	for i, x := range deploys {
		switch x.Status.Phase {
		case reconciler.Completed:
			d.Deploys++
			d.Changes++
		case reconciler.Failed, reconciler.RollbackCompleted, reconciler.RollbackFailed:
			d.Changes++
			d.Failures++
			if t, ok := restoredAfter(x, deploys[i+1:], byName); ok {
				restores = append(restores, t)
			}
		}
	}
	window := now.Sub(first)
	if first.IsZero() || window < time.Hour {
		window = time.Hour
	}
	d.Window = humanDuration(window)
	perDay := float64(d.Deploys) / window.Hours() * 24
	d.Frequency = fmt.Sprintf("%.1f a day", perDay)
	if perDay < 1 {
		d.Frequency = fmt.Sprintf("%.1f a week", perDay*7)
	}
	d.FailureRate = "–"
	if d.Changes > 0 {
		d.FailureRate = fmt.Sprintf("%.0f%%", 100*float64(d.Failures)/float64(d.Changes))
	}
	d.Restores = len(restores)
	d.TimeToRestore = "–"
	if len(restores) > 0 {
		slices.Sort(restores)
		d.TimeToRestore = humanDuration(restores[len(restores)/2])
	}
	return d
}

// restoredAfter is how long the stage x failed in ran the failed release: from the failing
// task's end (the execution's, without one) to its rollback's end, or, without a completed
// rollback, to the next completed deploy.
func restoredAfter(x *reconciler.Execution, later []*reconciler.Execution, byName map[string]*reconciler.Execution) (time.Duration, bool) {
	failedAt := failedAt(x)
	if failedAt.IsZero() {
		return 0, false
	}
	if rb, ok := byName[x.Status.Rollback]; ok && rb.Status.Phase == reconciler.Completed && rb.Status.FinishedAt != nil {
		return rb.Status.FinishedAt.Sub(failedAt), true
	}
	for _, y := range later {
		if y.Status.Phase == reconciler.Completed && y.Status.FinishedAt != nil {
			return y.Status.FinishedAt.Sub(failedAt), true
		}
	}
	return 0, false
}

func failedAt(x *reconciler.Execution) time.Time {
	for _, st := range x.Status.Stages {
		for _, t := range st.Tasks {
			if t.Status == reconciler.Failed && t.FinishedAt != nil {
				return t.FinishedAt.Time
			}
		}
	}
	if x.Status.FinishedAt != nil {
		return x.Status.FinishedAt.Time
	}
	return time.Time{}
}
