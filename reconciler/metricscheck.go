package reconciler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"ebb.dev/ebb/internal/redact"
)

// MetricsCheck evaluates an instant PromQL query every Interval for For; fails when a value is
// above Max or below Min.
//
// Every sample of a vector result is checked. The check passes only when the whole window
// elapsed, no value left the bounds, and the last evaluation succeeded: an unreachable
// Prometheus, an error answer, NaN or an empty result is retried at the next interval and, if
// it persists to the end of the window, fails the check with that reason. A metrics gate must
// never pass because nobody could read the metrics.
type MetricsCheck struct {
	// Prometheus is the server's base URL, e.g. http://prometheus.monitoring:9090.
	Prometheus string
	// Query is the PromQL expression, evaluated as an instant query.
	Query string
	// Max and Min bound every value; nil leaves that side open.
	Max, Min *float64
	// Interval is the time between evaluations; For is the length of the window.
	Interval, For time.Duration
}

// metricsCheckName names the check in VerificationErrors.
const metricsCheckName = "metrics"

// Run performs the check. Its failures are VerificationErrors; a check that cannot be run as
// configured (no query, no bounds, no window) is a plain error.
func (m MetricsCheck) Run(ctx context.Context, client *http.Client) error {
	if err := m.validate(); err != nil {
		return err
	}
	if client == nil {
		client = http.DefaultClient
	}
	deadline := time.Now().Add(m.For)
	evaluations, failures := 0, 0
	var last error
	for {
		err := m.evaluate(ctx, client)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		evaluations++
		var verr *VerificationError
		if errors.As(err, &verr) {
			return verr
		}
		last = err
		if err != nil {
			failures++
		}
		now := time.Now()
		if !now.Before(deadline) {
			break
		}
		if err := sleepCtx(ctx, min(m.Interval, deadline.Sub(now))); err != nil {
			return err
		}
	}
	if last != nil {
		return verificationFailed(metricsCheckName, "%v; %d of %d evaluations over %s failed (query: %s)", last, failures, evaluations, m.For, m.Query)
	}
	return nil
}

// validate rejects a check that could never judge a release.
func (m MetricsCheck) validate() error {
	switch {
	case m.Prometheus == "":
		return errors.New("metrics check: no prometheus URL")
	case m.Query == "":
		return errors.New("metrics check: no query")
	case m.Max == nil && m.Min == nil:
		return fmt.Errorf("metrics check of %q: neither max nor min is set", m.Query)
	case m.Interval <= 0 || m.For <= 0:
		return fmt.Errorf("metrics check of %q: interval %s and for %s must be positive", m.Query, m.Interval, m.For)
	}
	return nil
}

// evaluate runs the query once. It returns a VerificationError when a value is out of bounds or
// Prometheus rejects the query itself (a syntax error does not heal within the window), and a
// plain error when this evaluation could not judge the release and should be retried.
func (m MetricsCheck) evaluate(ctx context.Context, client *http.Client) error {
	samples, err := m.query(ctx, client)
	if err != nil {
		return err
	}
	if len(samples) == 0 {
		return errors.New("query returned no samples")
	}
	for _, s := range samples {
		if math.IsNaN(s.value) {
			return fmt.Errorf("query returned NaN%s", s.labels)
		}
	}
	for _, s := range samples {
		if m.Max != nil && s.value > *m.Max {
			return verificationFailed(metricsCheckName, "value %s%s > max %s (query: %s)", promValue(s.value), s.labels, promValue(*m.Max), m.Query)
		}
		if m.Min != nil && s.value < *m.Min {
			return verificationFailed(metricsCheckName, "value %s%s < min %s (query: %s)", promValue(s.value), s.labels, promValue(*m.Min), m.Query)
		}
	}
	return nil
}

// promSample is one value of a query result; labels is empty for a scalar, else " of {a="b"}".
type promSample struct {
	value  float64
	labels string
}

// promAnswer is the body of GET /api/v1/query, success or error.
type promAnswer struct {
	Status    string `json:"status"`
	ErrorType string `json:"errorType"`
	Error     string `json:"error"`
	Data      struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	} `json:"data"`
}

// query asks Prometheus's HTTP API for the query's value now.
func (m MetricsCheck) query(ctx context.Context, client *http.Client) ([]promSample, error) {
	ctx, cancel := context.WithTimeout(ctx, min(max(m.Interval, time.Second), 10*time.Second))
	defer cancel()
	at := redact.URL(m.Prometheus) // reasons are recorded and shown: the URL may hold a token
	endpoint := strings.TrimRight(m.Prometheus, "/") + "/api/v1/query?" + url.Values{"query": {m.Query}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return nil, fmt.Errorf("query prometheus at %s: %s", at, redact.Text(err.Error()))
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("prometheus at %s unreachable: %w", at, withoutURL(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("read answer of prometheus at %s: %w", at, err)
	}
	var answer promAnswer
	if err := json.Unmarshal(body, &answer); err != nil {
		return nil, fmt.Errorf("prometheus at %s answered HTTP %s, not the query API's JSON", at, resp.Status)
	}
	if answer.Status != "success" {
		if answer.ErrorType == "bad_data" {
			return nil, verificationFailed(metricsCheckName, "prometheus rejected the query: %s (query: %s)", answer.Error, m.Query)
		}
		return nil, fmt.Errorf("prometheus at %s answered HTTP %s: %s: %s", at, resp.Status, answer.ErrorType, answer.Error)
	}
	return parsePromResult(answer.Data.ResultType, answer.Data.Result)
}

// parsePromResult reads a vector or scalar result; a matrix or string cannot be compared to bounds.
func parsePromResult(resultType string, raw json.RawMessage) ([]promSample, error) {
	switch resultType {
	case "scalar":
		var point []any
		if err := json.Unmarshal(raw, &point); err != nil {
			return nil, fmt.Errorf("read scalar result: %w", err)
		}
		v, err := promPointValue(point)
		if err != nil {
			return nil, err
		}
		return []promSample{{value: v}}, nil
	case "vector":
		var vector []struct {
			Metric map[string]string `json:"metric"`
			Value  []any             `json:"value"`
		}
		if err := json.Unmarshal(raw, &vector); err != nil {
			return nil, fmt.Errorf("read vector result: %w", err)
		}
		out := make([]promSample, 0, len(vector))
		for _, s := range vector {
			v, err := promPointValue(s.Value)
			if err != nil {
				return nil, err
			}
			out = append(out, promSample{value: v, labels: promLabels(s.Metric)})
		}
		return out, nil
	}
	return nil, fmt.Errorf("query returned a %s; want an instant vector or a scalar", resultType)
}

// promPointValue reads the value of a [timestamp, "value"] pair.
func promPointValue(point []any) (float64, error) {
	if len(point) != 2 {
		return 0, fmt.Errorf("read sample %v: want [time, value]", point)
	}
	s, ok := point[1].(string)
	if !ok {
		return 0, fmt.Errorf("read sample %v: value is not a string", point)
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("read sample value %q: %w", s, err)
	}
	return v, nil
}

// promLabels writes a series as PromQL shows it, prefixed " of ", or "" for none:
// ` of http_errors{code="500", job="web"}`.
func promLabels(metric map[string]string) string {
	if len(metric) == 0 {
		return ""
	}
	keys := make([]string, 0, len(metric))
	for k := range metric {
		if k != "__name__" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.Quote(metric[k])
	}
	return " of " + metric["__name__"] + "{" + strings.Join(parts, ", ") + "}"
}

func promValue(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// withoutURL drops the *url.Error wrapping, which repeats the whole query URL, to keep the
// reason short: "dial tcp 127.0.0.1:9: connect: connection refused".
func withoutURL(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}

// sleepCtx waits for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
