package reconciler

import (
	"context"
	"encoding/json"
	"math"
	"net"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/internal/testprom"
)

// errorRateExporter serves ebb_test_error_rate{case} with values the test sets, standing in
// for an application's metrics.
func errorRateExporter(t *testing.T, values map[string]float64) (target string) {
	t.Helper()
	reg := prometheus.NewRegistry()
	rate := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ebb_test_error_rate", Help: "Error rate the test sets."}, []string{"case"})
	reg.MustRegister(rate)
	for c, v := range values {
		rate.WithLabelValues(c).Set(v)
	}
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	return u.Host
}

// closedPort returns a loopback URL where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return "http://" + addr
}

func bound(v float64) *float64 { return &v }

// TestMetricsCheck runs the check against a real Prometheus scraping a real exporter.
func TestMetricsCheck(t *testing.T) {
	values := map[string]float64{"healthy": 0.01, "errors": 0.31, "idle": 0.2, "multi-a": 0.01, "multi-b": 0.9}
	target := errorRateExporter(t, values)
	prom := testprom.StartT(t, testprom.Options{Targets: []string{target}, ScrapeInterval: time.Second})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	require.NoError(t, prom.WaitForSamples(ctx, "ebb_test_error_rate", len(values)), prom.LogTail(20))
	unreachable := closedPort(t)

	const window = 3 * time.Second
	tests := []struct {
		name       string
		prometheus string
		query      string
		max, min   *float64
		// want is nil for a pass, else substrings of the VerificationError's reason.
		want []string
		// wholeWindow says the check must take the whole window: it passed, or it retried.
		wholeWindow bool
	}{
		{name: "within bounds passes after the window", query: `ebb_test_error_rate{case="healthy"}`, max: bound(0.05), wholeWindow: true},
		{name: "within both bounds passes", query: `sum(ebb_test_error_rate{case="healthy"})`, max: bound(0.05), min: bound(0), wholeWindow: true},
		{name: "over max fails with value and query", query: `sum(ebb_test_error_rate{case="errors"})`, max: bound(0.05),
			want: []string{"value 0.31 > max 0.05", `(query: sum(ebb_test_error_rate{case="errors"}))`}},
		{name: "under min fails", query: `ebb_test_error_rate{case="idle"}`, min: bound(0.5),
			want: []string{"value 0.2", `case="idle"`, "< min 0.5", `(query: ebb_test_error_rate{case="idle"})`}},
		{name: "every sample of a vector is checked", query: `ebb_test_error_rate{case=~"multi-.*"}`, max: bound(0.05),
			want: []string{`value 0.9 of ebb_test_error_rate{case="multi-b", instance="`, "> max 0.05"}},
		{name: "a scalar is checked", query: `scalar(ebb_test_error_rate{case="errors"})`, max: bound(0.1),
			want: []string{"value 0.31 > max 0.1"}},
		// The query names the series only after a second, returning no samples until then:
		// only an error that lasts to the end of the window fails the check.
		{name: "recovering before the window ends passes", max: bound(0.05), wholeWindow: true,
			query: `ebb_test_error_rate{case="healthy"} and on() (vector(time()) > ` + promTime(time.Now().Add(time.Second)) + `)`},
		{name: "no samples is not a pass", query: `ebb_test_error_rate{case="absent"}`, max: bound(0.05),
			want: []string{"query returned no samples", `(query: ebb_test_error_rate{case="absent"})`}, wholeWindow: true},
		{name: "a bad query fails with prometheus's error", query: `sum(rate(ebb_test_error_rate[1m]`, max: bound(0.05),
			want: []string{"prometheus rejected the query", "parse error", "(query: sum(rate(ebb_test_error_rate[1m])"}},
		{name: "unreachable prometheus fails after retrying", prometheus: unreachable, query: `up`, max: bound(1),
			want: []string{"prometheus at " + unreachable + " unreachable", "connection refused", "evaluations over 3s failed", "(query: up)"}, wholeWindow: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			check := MetricsCheck{Prometheus: prom.URL, Query: tt.query, Max: tt.max, Min: tt.min, Interval: 500 * time.Millisecond, For: window}
			if tt.prometheus != "" {
				check.Prometheus = tt.prometheus
			}
			start := time.Now()
			err := check.Run(ctx, nil)
			took := time.Since(start)

			if tt.wholeWindow {
				assert.GreaterOrEqual(t, took, window, "the check ended before its window")
			}
			if tt.want == nil {
				require.NoError(t, err)
				return
			}
			var verr *VerificationError
			require.ErrorAs(t, err, &verr)
			assert.Equal(t, "metrics", verr.Check)
			t.Log(verr.Reason)
			for _, w := range tt.want {
				assert.Contains(t, verr.Reason, w)
			}
		})
	}
}

func promTime(t time.Time) string { return promValue(float64(t.UnixMilli()) / 1000) }

// TestMetricsCheckConfig rejects checks that could never judge a release, before querying.
func TestMetricsCheckConfig(t *testing.T) {
	ok := MetricsCheck{Prometheus: "http://127.0.0.1:1", Query: "up", Max: bound(1), Interval: time.Second, For: time.Second}
	tests := []struct {
		name   string
		change func(*MetricsCheck)
		want   string
	}{
		{"no prometheus", func(m *MetricsCheck) { m.Prometheus = "" }, "no prometheus URL"},
		{"no query", func(m *MetricsCheck) { m.Query = "" }, "no query"},
		{"no bounds", func(m *MetricsCheck) { m.Max = nil }, "neither max nor min"},
		{"no window", func(m *MetricsCheck) { m.For = 0 }, "must be positive"},
		{"no interval", func(m *MetricsCheck) { m.Interval = 0 }, "must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := ok
			tt.change(&m)
			err := m.Run(context.Background(), nil)
			require.ErrorContains(t, err, tt.want)
			var verr *VerificationError
			assert.NotErrorAs(t, err, &verr, "a configuration error is not a failed release")
		})
	}
}

// TestParsePromResult reads the result types of the query API.
func TestParsePromResult(t *testing.T) {
	tests := []struct {
		name, resultType, result string
		want                     []promSample
		wantErr                  string
	}{
		{name: "scalar", resultType: "scalar", result: `[1700000000.1, "0.5"]`, want: []promSample{{value: 0.5}}},
		{name: "vector", resultType: "vector", result: `[{"metric": {"__name__": "http_errors", "job": "web", "code": "500"}, "value": [1700000000, "+Inf"]}]`,
			want: []promSample{{value: math.Inf(1), labels: ` of http_errors{code="500", job="web"}`}}},
		{name: "vector without a name", resultType: "vector", result: `[{"metric": {"job": "web"}, "value": [1700000000, "1"]}]`,
			want: []promSample{{value: 1, labels: ` of {job="web"}`}}},
		{name: "empty vector", resultType: "vector", result: `[]`, want: []promSample{}},
		{name: "matrix", resultType: "matrix", result: `[]`, wantErr: "query returned a matrix; want an instant vector or a scalar"},
		{name: "bad value", resultType: "scalar", result: `[1700000000, "many"]`, wantErr: `read sample value "many"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePromResult(tt.resultType, json.RawMessage(tt.result))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}
