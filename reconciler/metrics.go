package reconciler

import (
	"github.com/prometheus/client_golang/prometheus"
)

// gateDurationLabels are the labels of ebb_gate_duration_seconds. It has no pipeline label: a
// histogram of 16 buckets per pipeline, stage, gate and result held 5.6 MB of the daemon's
// 45 MB heap at 500 pipelines, and made as many series in Prometheus for every pipeline.
// ebb_verify_duration_seconds keeps the pipeline, and each task's message says how long each
// of its gates took.
var gateDurationLabels = []string{"stage", "gate", "result"}

// Metrics are the reconciler's Prometheus metrics.
type Metrics struct {
	executions     *prometheus.CounterVec
	rollbacks      *prometheus.CounterVec
	verifyDuration *prometheus.HistogramVec
	gateDuration   *prometheus.HistogramVec
	timeToRollback *prometheus.HistogramVec
	drift          *prometheus.CounterVec
	driftChecks    *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg, when not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		executions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ebb_executions_total", Help: "Executions that ended, by pipeline and final status.",
		}, []string{"pipeline", "status"}),
		rollbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ebb_rollbacks_total", Help: "Rollbacks started, by pipeline, stage and the check that failed.",
		}, []string{"pipeline", "stage", "reason"}),
		verifyDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ebb_verify_duration_seconds", Help: "Time to verify a release: every gate of one verification, in every model.",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 14),
		}, []string{"pipeline", "stage"}),
		gateDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ebb_gate_duration_seconds", Help: "Time each verification gate took, by stage, gate (rollout, pods, objects, traffic, healthCheck, metrics, approval) and result (passed, failed, error), over every pipeline.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 16),
		}, gateDurationLabels),
		timeToRollback: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ebb_rollback_duration_seconds", Help: "Time from a failed verification to the known-good release verified again.",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 14),
		}, []string{"pipeline", "stage"}),
		drift: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ebb_drift_total", Help: "Objects found changed by hand, by pipeline, stage and whether ebb restored them.",
		}, []string{"pipeline", "stage", "action"}),
		driftChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ebb_drift_checks_total", Help: "Drift checks of a stage at rest, by pipeline, stage and result (in-sync, drifted, error).",
		}, []string{"pipeline", "stage", "result"}),
	}
	if reg != nil {
		reg.MustRegister(m.executions, m.rollbacks, m.verifyDuration, m.gateDuration, m.timeToRollback, m.drift, m.driftChecks)
	}
	return m
}
