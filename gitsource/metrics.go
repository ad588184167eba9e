package gitsource

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are a source's Prometheus series, labelled by source name only (never by URL, which
// could carry a credential).
type metrics struct {
	fetchDuration *prometheus.HistogramVec
	polls         *prometheus.CounterVec
	errors        *prometheus.CounterVec
	commit        *prometheus.GaugeVec
	lastSuccess   *prometheus.GaugeVec
	triggers      *prometheus.CounterVec
	// credentialReloads counts rotated credentials taken into use.
	credentialReloads *prometheus.CounterVec
}

// newMetrics registers the series with reg, or reuses them when another source registered
// them already. A nil reg gives working but unregistered series.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		fetchDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ebb_git_fetch_duration_seconds",
			Help:    "Time to fetch new commits from the remote (or clone it), by source.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"source"}),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ebb_git_polls_total",
			Help: "Polls of the remote, by source and result (unchanged, changed, error).",
		}, []string{"source", "result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ebb_git_errors_total",
			Help: "Failed polls and fetches, by source and kind (unavailable, auth, not_found, cache, config).",
		}, []string{"source", "kind"}),
		commit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ebb_git_commit_info",
			Help: "The commit a source serves: 1 for the current commit, by source and commit.",
		}, []string{"source", "commit"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ebb_git_last_success_timestamp_seconds",
			Help: "Unix time of the last successful poll, by source; alert when it falls behind.",
		}, []string{"source"}),
		triggers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ebb_git_triggers_total",
			Help: "Requests for an immediate poll, by source.",
		}, []string{"source"}),
		credentialReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ebb_git_credential_reloads_total",
			Help: "Changed credential files taken into use without a restart, by source.",
		}, []string{"source"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.fetchDuration = register(reg, m.fetchDuration, &err)
	m.polls = register(reg, m.polls, &err)
	m.errors = register(reg, m.errors, &err)
	m.commit = register(reg, m.commit, &err)
	m.lastSuccess = register(reg, m.lastSuccess, &err)
	m.triggers = register(reg, m.triggers, &err)
	m.credentialReloads = register(reg, m.credentialReloads, &err)
	return m, err
}

// register registers c, or returns the collector registered before it under the same name.
func register[C prometheus.Collector](reg prometheus.Registerer, c C, errp *error) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		*errp = errors.Join(*errp, err)
	}
	return c
}
