package dashboard

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"time"

	"ebb.dev/ebb/reconciler"
)

// heartbeat keeps an idle event stream open through proxies.
const heartbeat = 25 * time.Second

// rowEvent is the data of a "row" event: the list's row of an execution, rendered as on the
// server, or remove when it left the list's filter.
type rowEvent struct {
	ID     string            `json:"id"`
	Phase  reconciler.Status `json:"phase,omitempty"`
	Seq    int               `json:"seq,omitempty"`
	HTML   string            `json:"html,omitempty"`
	Remove bool              `json:"remove,omitempty"`
	// Created is true for an execution the stream had not told of before.
	Created bool `json:"created,omitempty"`
}

// refreshEvent is the data of a "refresh" event: the page should fetch itself again.
type refreshEvent struct {
	Name string `json:"name,omitempty"`
	// Pipeline names the pipeline whose Pipeline object changed.
	Pipeline string            `json:"pipeline,omitempty"`
	Phase    reconciler.Status `json:"phase,omitempty"`
	Seq      int               `json:"seq,omitempty"`
}

func (s *Server) handleExecutions(w http.ResponseWriter, r *http.Request) {
	limit := s.opts.PageSize
	if n, err := strconv.Atoi(r.URL.Query().Get("limit")); err == nil && n > 0 {
		limit = n
	}
	s.render(w, http.StatusOK, "executions", s.listViewOf(filterOf(r.URL.Query()), limit))
}

// handleEvents streams the changes that concern one page as server-sent events, from the
// watch on executions: "row" events for the list (?view=list and its filter), "refresh"
// events for an execution (?view=execution&name=) or a pipeline (?view=pipeline&name=).
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	view, name, f := q.Get("view"), q.Get("name"), filterOf(q)
	switch view {
	case "list", "execution", "pipeline":
	default:
		http.Error(w, `view must be "list", "execution" or "pipeline"`, http.StatusBadRequest)
		return
	}
	rc := http.NewResponseController(w)
	// The daemon's server has a write timeout; a stream lives longer.
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	sub := s.feed.subscribe()
	defer s.feed.unsubscribe(sub)
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n: ebb\n\n")
	if err := rc.Flush(); err != nil {
		return
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.stopped:
			return
		case <-tick.C:
			fmt.Fprint(w, ": heartbeat\n\n")
		case c := <-sub.ch:
			if sub.takeLost() {
				writeEvent(w, "refresh", refreshEvent{})
				drain(sub)
				break
			}
			s.writeChange(w, view, name, f, c)
			// Send what else has come in at once, then flush.
			for more := true; more; {
				select {
				case c := <-sub.ch:
					s.writeChange(w, view, name, f, c)
				default:
					more = false
				}
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

func drain(sub *subscription) {
	for {
		select {
		case <-sub.ch:
		default:
			return
		}
	}
}

// writeChange writes the event, if any, that change c means for the page.
func (s *Server) writeChange(w http.ResponseWriter, view, name string, f filter, c change) {
	if c.pipeline != "" {
		if view == "pipeline" && c.pipeline == name {
			writeEvent(w, "refresh", refreshEvent{Pipeline: c.pipeline})
		}
		return
	}
	x, ok := s.feed.get(c.name)
	seq := 0
	var phase reconciler.Status
	if ok {
		phase = x.Status.Phase
		if n := len(x.Status.History); n > 0 {
			seq = x.Status.History[n-1].Seq
		}
	}
	switch view {
	case "list":
		if !ok || !f.matches(x) {
			writeEvent(w, "row", rowEvent{ID: "x-" + c.name, Remove: true, Created: c.added && ok})
			return
		}
		var b bytes.Buffer
		if err := s.pages["executions"].ExecuteTemplate(&b, "row", s.rowOf(x, s.opts.Now())); err != nil {
			s.opts.Logger.Error("render row", "execution", c.name, "err", err)
			return
		}
		writeEvent(w, "row", rowEvent{ID: "x-" + c.name, Phase: phase, Seq: seq, HTML: b.String(), Created: c.added})
	case "execution":
		// The page shows the execution, and its parent's or rollback's name and status.
		if c.name == name || (ok && (x.Spec.Parent == name || x.Status.Rollback == name)) {
			writeEvent(w, "refresh", refreshEvent{Name: c.name, Phase: phase, Seq: seq})
		}
	case "pipeline":
		if ok && x.Spec.Pipeline == name || !ok {
			writeEvent(w, "refresh", refreshEvent{Name: c.name, Phase: phase, Seq: seq})
		}
	}
}

func writeEvent(w http.ResponseWriter, event string, data any) {
	b, err := json.Marshal(data)
	if err != nil {
		return
	}
	fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
}

// parseTemplates parses each page with the layout.
func parseTemplates() (map[string]*template.Template, error) {
	pages := map[string]*template.Template{}
	for _, name := range []string{"executions", "execution", "pipeline", "error"} {
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("parse the %s page: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// errorView is the page of an error.
type errorView struct {
	page
	Message string
}
