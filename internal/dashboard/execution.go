package dashboard

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"ebb.dev/ebb/internal/redact"
	"ebb.dev/ebb/reconciler"
)

// executionView is one execution's page.
type executionView struct {
	page
	X             row
	CommitMessage string
	Stages        []stageView
	// Timeline has a bar per task, placed on the execution's time span.
	Timeline []bar
	// TimelineSpan is how long the timeline covers.
	TimelineSpan string
	History      []reconciler.PhaseChange
	// Trigger is the trigger point of a rollback: the comment that names stage, task, reason,
	// failed and restored commits.
	Trigger string
	// Restored is the release a rollback execution restores (commit and image).
	RestoredCommit, RestoredImage string
	Approvals                     []approvalView
	ApprovalNote                  string
	CSRF                          string
}

// stageView is one stage with its tasks.
type stageView struct {
	Name, Duration, Message string
	Status                  reconciler.Status
	Images                  []string
	Tasks                   []taskView
}

type taskView struct {
	Name, Duration, Message string
	Status                  reconciler.Status
}

// bar is one task on the timeline: its start and width as percentages of the span (drawn
// as SVG attributes: the page's Content-Security-Policy allows no inline style).
type bar struct {
	Label       string
	Status      reconciler.Status
	Duration    string
	Left, Width string
}

// approvalView is a stage waiting for (or given) a decision.
type approvalView struct {
	Name, Stage, Approvers, ExpiresAt string
	Expired                           bool
	Decision                          *reconciler.Decision
	// Open is true when the page may show Approve and Reject.
	Open bool
}

func (s *Server) handleExecution(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	x, ok := s.feed.get(name)
	if !ok {
		s.errorPage(w, http.StatusNotFound, "Not found", fmt.Sprintf("execution %s not found in namespace %s", name, s.opts.Namespace))
		return
	}
	v := s.executionViewOf(r, x, s.csrf(w, r))
	if stage := r.URL.Query().Get("decided"); stage != "" {
		for _, a := range v.Approvals {
			if a.Stage == stage && a.Decision != nil {
				v.Flash = &flash{Class: "ok", Text: fmt.Sprintf("Stage %s was %s by %s.", stage, pastTense(a.Decision.Approved), a.Decision.By)}
			}
		}
	}
	s.render(w, http.StatusOK, "execution", v)
}

func pastTense(approved bool) string {
	if approved {
		return "approved"
	}
	return "rejected"
}

// executionViewOf is x's page, with its approvals read as the user.
func (s *Server) executionViewOf(r *http.Request, x *reconciler.Execution, csrf string) *executionView {
	now := s.opts.Now()
	v := &executionView{
		page: page{Title: x.Spec.DisplayName, Namespace: s.opts.Namespace, ReadOnly: s.opts.ReadOnly,
			Live: "/events?view=execution&name=" + x.Name, Self: "/executions/" + x.Name},
		X:             s.rowOf(x, now),
		CommitMessage: x.Spec.CommitMessage,
	}
	for _, c := range x.Status.History {
		c.Comment = redact.Text(c.Comment)
		v.History = append(v.History, c)
	}
	if x.Spec.Kind == reconciler.KindRollback {
		v.Trigger = redact.Text(x.Status.Comment)
		v.RestoredCommit, v.RestoredImage = x.Spec.Commit, x.Status.Image
	} else if x.Status.Rollback != "" || x.Status.Phase == reconciler.RollingBack {
		v.Trigger = redact.Text(x.Status.Comment)
		if rb, ok := s.feed.get(x.Status.Rollback); ok {
			v.RestoredCommit, v.RestoredImage = rb.Spec.Commit, rb.Status.Image
		}
	}
	v.Stages, v.Timeline, v.TimelineSpan = stagesOf(x, now)
	s.addApprovals(r, x, v, now)
	if !s.opts.ReadOnly {
		v.CSRF = csrf
	}
	return v
}

// stagesOf is x's stage tree and the timeline of its tasks.
func stagesOf(x *reconciler.Execution, now time.Time) ([]stageView, []bar, string) {
	var stages []stageView
	start, end := time.Time{}, time.Time{}
	widen := func(from, to time.Time) {
		if start.IsZero() || from.Before(start) {
			start = from
		}
		if to.After(end) {
			end = to
		}
	}
	type timed struct {
		label    string
		status   reconciler.Status
		from, to time.Time
	}
	var tasks []timed
	for _, st := range x.Status.Stages {
		sv := stageView{Name: st.Name, Status: st.Status, Duration: span(st.StartedAt, st.FinishedAt, now), Message: redact.Text(st.Message), Images: st.Images}
		for _, t := range st.Tasks {
			sv.Tasks = append(sv.Tasks, taskView{Name: t.Name, Status: t.Status, Duration: span(t.StartedAt, t.FinishedAt, now), Message: redact.Text(t.Message)})
			if t.StartedAt == nil {
				continue
			}
			to := now
			if t.FinishedAt != nil {
				to = t.FinishedAt.Time
			}
			widen(t.StartedAt.Time, to)
			tasks = append(tasks, timed{label: st.Name + " · " + t.Name, status: t.Status, from: t.StartedAt.Time, to: to})
		}
		stages = append(stages, sv)
	}
	total := end.Sub(start)
	var bars []bar
	for _, t := range tasks {
		left, width := 0.0, 100.0
		if total > 0 {
			left = 100 * float64(t.from.Sub(start)) / float64(total)
			width = 100 * float64(t.to.Sub(t.from)) / float64(total)
		}
		width = max(width, 0.5)
		left = min(left, 100-width)
		bars = append(bars, bar{Label: t.label, Status: t.status, Duration: humanDuration(t.to.Sub(t.from)),
			Left: fmt.Sprintf("%.2f", left), Width: fmt.Sprintf("%.2f", width)})
	}
	return stages, bars, humanDuration(total)
}

// addApprovals reads the execution's approvals as the user. An error (the user may not list
// approvals) is shown on the page, not fatal: the rest of the page is still right.
func (s *Server) addApprovals(r *http.Request, x *reconciler.Execution, v *executionView, now time.Time) {
	waiting := x.Status.Phase == reconciler.Waiting
	list, err := s.store.ListApprovals(r.Context(), x.Name)
	if err != nil {
		if waiting {
			v.ApprovalNote = "The approvals of this execution cannot be read as you: " + apiMessage(err)
		}
		return
	}
	for _, a := range list {
		av := approvalView{Name: a.Name, Stage: a.Spec.Stage, Approvers: strings.Join(a.Spec.Approvers, ", "),
			ExpiresAt: a.Spec.ExpiresAt.UTC().Format(time.RFC3339), Expired: a.Expired(now), Decision: a.Spec.Decision}
		av.Open = a.Spec.Decision == nil && !av.Expired && !s.opts.ReadOnly && waiting
		v.Approvals = append(v.Approvals, av)
	}
}

// apiMessage is the API server's message for err, or err itself.
func apiMessage(err error) string {
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		return status.Status().Message
	}
	return redact.Text(err.Error())
}
