package dashboard

import (
	"html/template"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/reconciler"
)

// span is the time from start to end (or to now, while running), "" before it started.
func span(start, end *metav1.Time, now time.Time) string {
	if start == nil {
		return ""
	}
	stop := now
	if end != nil {
		stop = end.Time
	}
	return humanDuration(stop.Sub(start.Time))
}

// humanDuration is d rounded for people: 850ms, 12.3s, 4m05s, 2h10m, 3d4h.
func humanDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		d = d.Round(time.Second)
		return strings.TrimSuffix(d.String(), "0s")
	case d < 48*time.Hour:
		d = d.Round(time.Minute)
		return strings.TrimSuffix(d.String(), "0s")
	}
	days := int(d / (24 * time.Hour))
	hours := int((d % (24 * time.Hour)) / time.Hour)
	return strconv.Itoa(days) + "d" + strconv.Itoa(hours) + "h"
}

// statusIcons pairs each status with a symbol, so the page never tells a status by colour
// alone.
var statusIcons = map[reconciler.Status]string{
	reconciler.Queued:            "○",
	reconciler.Running:           "▶",
	reconciler.Waiting:           "‖",
	reconciler.Completed:         "✔",
	reconciler.Failed:            "✘",
	reconciler.Canceled:          "⊘",
	reconciler.RollingBack:       "↺",
	reconciler.RollbackCompleted: "↩",
	reconciler.RollbackFailed:    "⚠",
}

var funcs = template.FuncMap{
	"icon": func(s reconciler.Status) string {
		if i, ok := statusIcons[s]; ok {
			return i
		}
		return "·"
	},
	"statusClass": func(s reconciler.Status) string {
		if s == "" {
			return "s-none"
		}
		return "s-" + strings.ToLower(strings.ReplaceAll(string(s), "_", "-"))
	},
	"time": func(t any) string {
		switch v := t.(type) {
		case *time.Time:
			if v == nil {
				return ""
			}
			return v.UTC().Format("2006-01-02 15:04:05Z")
		case time.Time:
			if v.IsZero() {
				return ""
			}
			return v.UTC().Format("2006-01-02 15:04:05Z")
		case *metav1.Time:
			if v == nil {
				return ""
			}
			return v.UTC().Format("2006-01-02 15:04:05Z")
		case metav1.Time:
			if v.IsZero() {
				return ""
			}
			return v.UTC().Format("2006-01-02 15:04:05Z")
		}
		return ""
	},
	"iso": func(t any) string {
		switch v := t.(type) {
		case *time.Time:
			if v != nil {
				return v.UTC().Format(time.RFC3339)
			}
		case *metav1.Time:
			if v != nil {
				return v.UTC().Format(time.RFC3339)
			}
		case metav1.Time:
			return v.UTC().Format(time.RFC3339)
		}
		return ""
	},
	"short": func(sha string) string {
		if len(sha) > 7 {
			return sha[:7]
		}
		return sha
	},
	"join": strings.Join,
}
