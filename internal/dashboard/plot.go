package dashboard

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"ebb.dev/ebb/reconciler"
)

// plot is the release history of a pipeline, one row per stage over time, drawn as SVG: a
// mark for each deploy, failed release, rollback and redeploy.
type plot struct {
	Width, Height int
	Rows          []plotRow
	Points        []plotPoint
	From, To      string
	// Empty is true when there is nothing to draw.
	Empty bool
}

type plotRow struct {
	Label string
	Y     int
}

type plotPoint struct {
	X, Y  int
	Class string
	Title string
}

const (
	plotWidth  = 720
	plotLeft   = 90
	plotRight  = 16
	plotRowH   = 34
	plotTop    = 14
	plotBottom = 26
)

// plotOf draws the stage records of executions on a row per stage.
func plotOf(executions []*reconciler.Execution, stages []string, now time.Time) plot {
	type mark struct {
		stage, class, title string
		at                  time.Time
	}
	var marks []mark
	for _, x := range executions {
		for _, st := range x.Status.Stages {
			if st.StartedAt == nil {
				continue
			}
			class := markClass(x, st)
			title := fmt.Sprintf("%s · %s %s · %s", x.Spec.DisplayName, st.Name, strings.ToLower(string(st.Status)), st.StartedAt.UTC().Format("2006-01-02 15:04:05Z"))
			marks = append(marks, mark{stage: st.Name, class: class, title: title, at: st.StartedAt.Time})
			if !slices.Contains(stages, st.Name) {
				stages = append(stages, st.Name)
			}
		}
	}
	p := plot{Width: plotWidth, Height: plotTop + plotBottom + plotRowH*max(1, len(stages))}
	if len(marks) == 0 {
		p.Empty = true
		return p
	}
	from, to := marks[0].at, marks[0].at
	for _, m := range marks {
		from, to = minTime(from, m.at), maxTime(to, m.at)
	}
	if to.Sub(from) < time.Minute {
		to = from.Add(time.Minute)
	}
	p.From, p.To = from.UTC().Format("2006-01-02 15:04Z"), to.UTC().Format("2006-01-02 15:04Z")
	row := map[string]int{}
	for i, st := range stages {
		y := plotTop + plotRowH*i + plotRowH/2
		row[st] = y
		p.Rows = append(p.Rows, plotRow{Label: st, Y: y})
	}
	span := float64(to.Sub(from))
	inner := float64(plotWidth - plotLeft - plotRight)
	for _, m := range marks {
		x := plotLeft + int(inner*float64(m.at.Sub(from))/span)
		p.Points = append(p.Points, plotPoint{X: x, Y: row[m.stage], Class: m.class, Title: m.title})
	}
	return p
}

// markClass says what a stage record of x was: a deploy, a failure, a rollback or a redeploy.
func markClass(x *reconciler.Execution, st reconciler.StageRecord) string {
	switch {
	case x.Spec.Kind == reconciler.KindRollback:
		return "rollback"
	case st.Status == reconciler.Failed || st.Status == reconciler.RollbackFailed:
		return "failed"
	case strings.Contains(x.Status.Comment, "redeploy of"):
		return "redeploy"
	case st.Status == reconciler.Completed:
		return "deploy"
	}
	return "other"
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
