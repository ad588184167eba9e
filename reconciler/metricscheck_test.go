package reconciler

import (
	"context"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	prommodel "github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/testprom"
	"ebb.dev/ebb/planner"
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

// TestSamplesOf reads the result types of the query API.
func TestSamplesOf(t *testing.T) {
	tests := []struct {
		name    string
		value   prommodel.Value
		want    []promSample
		wantErr string
	}{
		{name: "scalar", value: &prommodel.Scalar{Value: 0.5}, want: []promSample{{value: 0.5}}},
		{name: "vector", value: prommodel.Vector{{Metric: prommodel.Metric{"__name__": "http_errors", "job": "web", "code": "500"}, Value: prommodel.SampleValue(math.Inf(1))}},
			want: []promSample{{value: math.Inf(1), labels: ` of http_errors{code="500", job="web"}`}}},
		{name: "vector without a name", value: prommodel.Vector{{Metric: prommodel.Metric{"job": "web"}, Value: 1}},
			want: []promSample{{value: 1, labels: ` of {job="web"}`}}},
		{name: "empty vector", value: prommodel.Vector{}, want: []promSample{}},
		{name: "matrix", value: prommodel.Matrix{}, wantErr: "query returned a matrix; want an instant vector or a scalar"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := samplesOf(tt.value)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// TestMetricsCheckAuth runs the check of a pipeline's verify.metrics against a real Prometheus
// behind basic auth (its --web.config.file), and behind a gateway that requires a bearer token
// (as kube-rbac-proxy or OpenShift's oauth-proxy front Thanos and OpenShift monitoring), with
// the credentials read from a real Secret in ebb's namespace or from a file. Wrong or missing
// credentials fail the check, saying so, and no credential reaches the reason.
func TestMetricsCheckAuth(t *testing.T) {
	const user, password, token = "ebb", "basic-pa55word-not-for-logs", "bearer-t0ken-not-for-logs"
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	require.NoError(t, err)
	target := errorRateExporter(t, map[string]float64{"healthy": 0.01})
	prom := testprom.StartT(t, testprom.Options{Targets: []string{target}, ScrapeInterval: time.Second,
		WebConfig: "basic_auth_users:\n  " + user + ": " + string(hash) + "\n", Username: user, Password: password})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	require.NoError(t, prom.WaitForSamples(ctx, "ebb_test_error_rate", 1), prom.LogTail(20))

	// The bearer gateway: the token, or 401; then on to Prometheus with its basic auth.
	upstream, err := url.Parse(prom.URL)
	require.NoError(t, err)
	proxy := httputil.NewSingleHostReverseProxy(upstream)
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		r.SetBasicAuth(user, password)
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(gateway.Close)

	// ebb's namespace holds the Secret; a file holds the same credentials.
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	ns, err := cs.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-metrics-auth-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = cs.CoreV1().Secrets(ns.Name).Create(t.Context(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "prometheus"},
		StringData: map[string]string{"password": password, "token": token, "wrong": "not-it"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	secrets := secretKeys{client: cs, namespace: ns.Name}
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "password"), []byte(password), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "token"), []byte(token+"\n"), 0o600))

	secret := func(key string) planner.SecretSource {
		return planner.SecretSource{Secret: &planner.SecretKeyRef{Name: "prometheus", Key: key}}
	}
	basic := func(s planner.SecretSource) *planner.MetricsAuth {
		return &planner.MetricsAuth{BasicAuth: &planner.MetricsBasicAuth{Username: user, Password: s}}
	}
	bearer := func(s planner.SecretSource) *planner.MetricsAuth { return &planner.MetricsAuth{BearerToken: &s} }
	tests := []struct {
		name   string
		server string
		auth   *planner.MetricsAuth
		want   []string // nil: passes
	}{
		{"basic auth from a Secret", prom.URL, basic(secret("password")), nil},
		{"basic auth from a file", prom.URL, basic(planner.SecretSource{File: filepath.Join(dir, "password")}), nil},
		{"bearer token from a Secret", gateway.URL, bearer(secret("token")), nil},
		{"bearer token from a file", gateway.URL, bearer(planner.SecretSource{File: filepath.Join(dir, "token")}), nil},
		{"no credentials", prom.URL, nil, []string{"refused ebb's credentials", "401", "verify.metrics.auth"}},
		{"wrong password", prom.URL, basic(secret("wrong")), []string{"refused ebb's credentials", "401"}},
		{"wrong token", gateway.URL, bearer(secret("wrong")), []string{"refused ebb's credentials", "401"}},
		{"missing Secret key", prom.URL, basic(secret("absent")), []string{`Secret ` + ns.Name + `/prometheus has no key "absent"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := &planner.MetricsCheck{Prometheus: tt.server, Query: `ebb_test_error_rate{case="healthy"}`, Max: bound(0.05),
				Interval: planner.Duration{Duration: 300 * time.Millisecond}, For: planner.Duration{Duration: time.Second}, Auth: tt.auth}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			err := newMetricsCheck(m, secrets).Run(ctx, nil)
			if tt.want == nil {
				require.NoError(t, err)
				return
			}
			var verr *VerificationError
			require.ErrorAs(t, err, &verr)
			for _, w := range tt.want {
				assert.Contains(t, verr.Reason, w)
			}
			for _, secret := range []string{password, token, string(hash)} {
				assert.NotContains(t, verr.Reason, secret)
			}
		})
	}
}
