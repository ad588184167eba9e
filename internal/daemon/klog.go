package daemon

import (
	"log/slog"

	"k8s.io/klog/v2"
)

// RouteKlog sends what client-go logs through klog (leader election, reflectors, client-side
// throttling, warnings) to log, as the "client-go" component, so the daemon's standard error is
// one JSON object a line with nothing else between them. klog's own flags are never parsed, so
// nothing else writes to standard error.
func RouteKlog(log *slog.Logger) {
	klog.SetSlogLogger(log.With("component", "client-go"))
}
