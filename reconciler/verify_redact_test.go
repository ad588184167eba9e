package reconciler

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHealthCheckRedactsURLs checks that a health check URL's token, in its query or its user
// info, never appears in the check's error or its reason, which become execution records,
// Events, log lines and CLI output; the query's name stays, so the reader sees which URL it was.
func TestHealthCheckRedactsURLs(t *testing.T) {
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer failing.Close()
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.1:1/elsewhere?token=secret", http.StatusFound)
	}))
	defer redirect.Close()

	tests := []struct {
		name, url, reason string
	}{
		{"refused", "http://ebb:secret@127.0.0.1:1/healthz?token=secret&x=1", "http://***@127.0.0.1:1/healthz?token=***&x=*** failed 2 times in a row, last: dial tcp 127.0.0.1:1: connect: connection refused"},
		{"error status", failing.URL + "/healthz?token=secret", failing.URL + "/healthz?token=*** failed 2 times in a row, last: HTTP 503 Service Unavailable"},
		{"redirected", redirect.URL + "/healthz?token=secret", redirect.URL + "/healthz?token=*** failed 2 times in a row, last: dial tcp 127.0.0.1:1: connect: connection refused"},
		{"unparsable", "http://127.0.0.1:1/healthz?token=secret\x7f", "http://127.0.0.1:1/healthz?token=*** failed 2 times in a row, last: parse \"http://127.0.0.1:1/healthz?token=***\": net/url: invalid control character in URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := HealthCheck{URL: tt.url, Interval: time.Millisecond, Successes: 1, Failures: 2, Timeout: 10 * time.Second}
			err := check.Run(context.Background(), nil)
			var verr *VerificationError
			require.True(t, errors.As(err, &verr), "a verification failure: %v", err)
			assert.Equal(t, "healthCheck", verr.Check)
			assert.Equal(t, tt.reason, verr.Reason)
			assert.NotContains(t, err.Error(), "secret")
		})
	}
}

// TestMetricsCheckRedactsURLs checks the same for a Prometheus URL.
func TestMetricsCheckRedactsURLs(t *testing.T) {
	limit := 0.5
	check := MetricsCheck{Prometheus: "http://ebb:secret@127.0.0.1:1/?token=secret", Query: "up", Max: &limit,
		Interval: time.Millisecond, For: 5 * time.Millisecond}
	err := check.Run(context.Background(), nil)
	var verr *VerificationError
	require.True(t, errors.As(err, &verr), "a verification failure: %v", err)
	assert.Contains(t, verr.Reason, "prometheus at http://***@127.0.0.1:1/?token=*** unreachable: dial tcp 127.0.0.1:1: connect: connection refused")
	assert.NotContains(t, err.Error(), "secret")
}
