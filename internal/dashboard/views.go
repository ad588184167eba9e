package dashboard

import (
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"ebb.dev/ebb/internal/redact"
	"ebb.dev/ebb/reconciler"
)

// page is what every page's layout needs.
type page struct {
	Title     string
	Namespace string
	ReadOnly  bool
	// Live is the page's event stream, "" for none; Self is the URL the script refetches.
	Live, Self string
	Flash      *flash
}

// flash is a one-time message at the top of a page: the outcome of a decision.
type flash struct {
	Class, Text string
}

// row is one execution as the list shows it.
type row struct {
	ID, Name, Display, Pipeline string
	Kind                        reconciler.ExecutionKind
	Phase                       reconciler.Status
	Stage                       string
	Commit, ShortCommit         string
	Message                     string
	Image                       string
	Started                     *time.Time
	Duration                    string
	Comment                     string
	// Parent and Rollback link a rollback and the execution it rolls back.
	Parent, ParentDisplay     string
	Rollback, RollbackDisplay string
}

// filter is the list's query: each field "" for all.
type filter struct {
	Pipeline, Stage, Status string
}

func filterOf(q url.Values) filter {
	return filter{Pipeline: q.Get("pipeline"), Stage: q.Get("stage"), Status: q.Get("status")}
}

func (f filter) matches(x *reconciler.Execution) bool {
	if f.Pipeline != "" && x.Spec.Pipeline != f.Pipeline {
		return false
	}
	if f.Status != "" && string(x.Status.Phase) != f.Status {
		return false
	}
	if f.Stage != "" && x.Status.Stage != f.Stage && x.Spec.Stage != f.Stage && !slices.ContainsFunc(x.Status.Stages, func(s reconciler.StageRecord) bool { return s.Name == f.Stage }) {
		return false
	}
	return true
}

func (f filter) query() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"pipeline": f.Pipeline, "stage": f.Stage, "status": f.Status} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q
}

// listView is the executions page.
type listView struct {
	page
	Filter            filter
	Pipelines, Stages []string
	Statuses          []reconciler.Status
	Rows              []row
	Total, Matching   int
	MoreURL           string
}

// allStatuses are the statuses, in the order an execution goes through them.
var allStatuses = []reconciler.Status{
	reconciler.Queued, reconciler.Running, reconciler.Waiting, reconciler.Completed, reconciler.Failed,
	reconciler.Canceled, reconciler.RollingBack, reconciler.RollbackCompleted, reconciler.RollbackFailed,
}

// rowOf is x as the list shows it.
func (s *Server) rowOf(x *reconciler.Execution, now time.Time) row {
	r := row{
		ID: "x-" + x.Name, Name: x.Name, Display: x.Spec.DisplayName, Pipeline: x.Spec.Pipeline, Kind: x.Spec.Kind,
		Phase: x.Status.Phase, Stage: x.Status.Stage, Commit: x.Spec.Commit, ShortCommit: x.Spec.ShortCommit,
		Message: firstLine(x.Spec.CommitMessage), Image: x.Status.Image, Comment: redact.Text(x.Status.Comment),
		Duration: span(x.Status.StartedAt, x.Status.FinishedAt, now),
		Parent:   x.Spec.Parent, Rollback: x.Status.Rollback,
	}
	if r.Display == "" {
		r.Display = x.Name
	}
	if x.Status.StartedAt != nil {
		t := x.Status.StartedAt.Time
		r.Started = &t
	}
	r.ParentDisplay = s.displayOf(r.Parent)
	r.RollbackDisplay = s.displayOf(r.Rollback)
	return r
}

// displayOf is the display name of the execution with object name name, or name itself.
func (s *Server) displayOf(name string) string {
	if name == "" {
		return ""
	}
	if x, ok := s.feed.get(name); ok && x.Spec.DisplayName != "" {
		return x.Spec.DisplayName
	}
	return name
}

// listViewOf is the executions page for f, showing at most limit rows.
func (s *Server) listViewOf(f filter, limit int) *listView {
	now := s.opts.Now()
	all := s.feed.list()
	v := &listView{
		page:     page{Title: "Executions", Namespace: s.opts.Namespace, ReadOnly: s.opts.ReadOnly},
		Filter:   f,
		Statuses: allStatuses,
		Total:    len(all),
	}
	pipelines, stages := map[string]bool{}, map[string]bool{}
	for _, x := range all {
		pipelines[x.Spec.Pipeline] = true
		for _, st := range x.Status.Stages {
			stages[st.Name] = true
		}
		if !f.matches(x) {
			continue
		}
		v.Matching++
		if len(v.Rows) < limit {
			v.Rows = append(v.Rows, s.rowOf(x, now))
		}
	}
	v.Pipelines, v.Stages = sortedKeys(pipelines), sortedKeys(stages)
	q := f.query()
	v.Self = "/?" + q.Encode()
	if v.Matching > limit {
		mq := f.query()
		mq.Set("limit", strconv.Itoa(limit+s.opts.PageSize))
		v.MoreURL = "/?" + mq.Encode()
		q.Set("limit", strconv.Itoa(limit))
	}
	q.Set("view", "list")
	v.Live = "/events?" + q.Encode()
	return v
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		if k != "" {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
