package gitsource

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMetrics(t *testing.T) {
	f := newFixture(t, true)
	s := f.source(t)
	first, _ := poll(t, s)
	poll(t, s)
	second := f.push(t, "Second", map[string]string{"a": "2"})
	poll(t, s)
	require.NoError(t, f.srv.Down())
	_, _, err := s.Poll(context.Background())
	require.Error(t, err)
	s.Trigger()
	require.NoError(t, f.srv.Up())

	// A second source on the same registry shares the series, told apart by its name.
	other := f.source(t, func(o *Options) { o.Name = "other" })
	poll(t, other)

	tests := []struct {
		name   string
		metric string
		labels map[string]string
		want   float64
	}{
		{"changed polls", "ebb_git_polls_total", map[string]string{"source": "pipelines", "result": "changed"}, 2},
		{"unchanged polls", "ebb_git_polls_total", map[string]string{"source": "pipelines", "result": "unchanged"}, 1},
		{"failed polls", "ebb_git_polls_total", map[string]string{"source": "pipelines", "result": "error"}, 1},
		{"errors by kind", "ebb_git_errors_total", map[string]string{"source": "pipelines", "kind": "unavailable"}, 1},
		{"fetches timed", "ebb_git_fetch_duration_seconds", map[string]string{"source": "pipelines"}, 2},
		{"current commit", "ebb_git_commit_info", map[string]string{"source": "pipelines", "commit": second}, 1},
		{"previous commit removed", "ebb_git_commit_info", map[string]string{"source": "pipelines", "commit": first.Commit}, -1},
		{"triggers", "ebb_git_triggers_total", map[string]string{"source": "pipelines"}, 1},
		{"other source", "ebb_git_polls_total", map[string]string{"source": "other", "result": "changed"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, metricValue(t, f.reg, tt.metric, tt.labels))
		})
	}
	last := metricValue(t, f.reg, "ebb_git_last_success_timestamp_seconds", map[string]string{"source": "pipelines"})
	assert.InDelta(t, float64(time.Now().Unix()), last, 600)
}

func TestMetricsConflictIsAnError(t *testing.T) {
	reg := prometheus.NewRegistry()
	// Something else took the name with other labels.
	require.NoError(t, reg.Register(prometheus.NewCounter(prometheus.CounterOpts{Name: "ebb_git_polls_total", Help: "x"})))
	o := DefaultOptions()
	o.URL, o.Branch, o.CacheDir, o.Registerer = "https://example.com/r.git", "main", t.TempDir(), reg
	_, err := New(o)
	require.Error(t, err)
	assert.Equal(t, KindConfig, KindOf(err))
	assert.Contains(t, err.Error(), "register metrics")
}

func TestBackoff(t *testing.T) {
	const lo, hi = time.Second, time.Minute
	tests := []struct {
		failures int
		jitter   float64
		want     time.Duration
	}{
		{1, 0.5, lo},
		{2, 0.5, 2 * lo},
		{3, 0.5, 4 * lo},
		{7, 0.5, hi},
		{100, 0.5, hi},
		{1, 0, 800 * time.Millisecond},
		{1, 0.999999, 1200 * time.Millisecond},
		{100, 0, 48 * time.Second},
	}
	for _, tt := range tests {
		t.Run("", func(t *testing.T) {
			got := backoff(tt.failures, lo, hi, tt.jitter)
			assert.InDelta(t, float64(tt.want), float64(got), float64(time.Millisecond), "failures=%d jitter=%v", tt.failures, tt.jitter)
		})
	}
}
