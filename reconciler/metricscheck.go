package reconciler

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	promconfig "github.com/prometheus/common/config"
	prommodel "github.com/prometheus/common/model"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/redact"
	"ebb.dev/ebb/planner"
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
	// HTTP is how to reach the server: basic auth, a bearer token, TLS (prometheus/common's
	// client configuration, as Prometheus' own remote clients use it); nil sends no
	// credentials. Its *Ref fields name keys of Secrets, read through Secrets.
	HTTP *promconfig.HTTPClientConfig
	// Secrets reads the Secret keys HTTP refers to ("name/key"); see newMetricsCheck.
	Secrets promconfig.SecretManager
}

// newMetricsCheck is the check of a stage's verify.metrics. Credentials are read when the check
// runs, at each request, from the files or the keys of Secrets in ebb's namespace that its auth
// names (secrets reads those), so a rotated credential is used as soon as it changes.
func newMetricsCheck(m *planner.MetricsCheck, secrets promconfig.SecretManager) MetricsCheck {
	check := MetricsCheck{Prometheus: m.Prometheus, Query: m.Query, Max: m.Max, Min: m.Min,
		Interval: m.Interval.Duration, For: m.For.Duration, Secrets: secrets}
	a := m.Auth
	if a == nil {
		return check
	}
	cfg := promconfig.DefaultHTTPClientConfig
	if b := a.BasicAuth; b != nil {
		cfg.BasicAuth = &promconfig.BasicAuth{Username: b.Username, PasswordFile: b.Password.File, PasswordRef: secretRef(b.Password.Secret)}
	}
	if t := a.BearerToken; t != nil {
		cfg.Authorization = &promconfig.Authorization{Type: "Bearer", CredentialsFile: t.File, CredentialsRef: secretRef(t.Secret)}
	}
	if t := a.TLS; t != nil {
		cfg.TLSConfig.ServerName, cfg.TLSConfig.InsecureSkipVerify = t.ServerName, t.InsecureSkipVerify
		if t.CA != nil {
			cfg.TLSConfig.CAFile, cfg.TLSConfig.CARef = t.CA.File, secretRef(t.CA.Secret)
		}
		if t.Cert != nil {
			cfg.TLSConfig.CertFile, cfg.TLSConfig.CertRef = t.Cert.File, secretRef(t.Cert.Secret)
		}
		if t.Key != nil {
			cfg.TLSConfig.KeyFile, cfg.TLSConfig.KeyRef = t.Key.File, secretRef(t.Key.Secret)
		}
	}
	check.HTTP = &cfg
	return check
}

// secretRef is the reference secretKeys reads: "name/key"; "" for none.
func secretRef(r *planner.SecretKeyRef) string {
	if r == nil {
		return ""
	}
	return r.Name + "/" + r.Key
}

// secretKeys reads keys of Secrets in ebb's own namespace for the metrics checks' auth.
type secretKeys struct {
	client    kubernetes.Interface
	namespace string
}

// Fetch returns the key of the Secret that ref ("name/key") names.
func (s secretKeys) Fetch(ctx context.Context, ref string) (string, error) {
	name, key, _ := strings.Cut(ref, "/")
	secret, err := s.client.CoreV1().Secrets(s.namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read Secret %s/%s for the metrics check: %w", s.namespace, name, err)
	}
	value, ok := secret.Data[key]
	if !ok {
		return "", fmt.Errorf("Secret %s/%s has no key %q for the metrics check", s.namespace, name, key)
	}
	return string(value), nil
}

// metricsSecrets reads the Secrets of the metrics checks' auth in the home cluster's records
// namespace; nil without a home client.
func (r *Reconciler) metricsSecrets() promconfig.SecretManager {
	if r.opts.Events == nil {
		return nil
	}
	return secretKeys{client: r.opts.Events, namespace: r.opts.Namespace}
}

// metricsCheckName names the check in VerificationErrors.
const metricsCheckName = "metrics"

// Run performs the check. Its failures are VerificationErrors; a check that cannot be run as
// configured (no query, no bounds, no window) is a plain error.
func (m MetricsCheck) Run(ctx context.Context, client *http.Client) error {
	if err := m.validate(); err != nil {
		return err
	}
	rt, err := m.roundTripper(client)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(m.For)
	evaluations, failures := 0, 0
	var last error
	for {
		err := m.evaluate(ctx, rt)
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

// roundTripper is the transport of the check's requests: with auth, prometheus/common's,
// which adds the credentials to each request; without, client's (the default one for nil).
func (m MetricsCheck) roundTripper(client *http.Client) (http.RoundTripper, error) {
	if m.HTTP == nil {
		if client != nil && client.Transport != nil {
			return client.Transport, nil
		}
		return http.DefaultTransport, nil
	}
	if err := m.HTTP.Validate(); err != nil {
		return nil, fmt.Errorf("metrics check of %q: auth: %w", m.Query, err)
	}
	var opts []promconfig.HTTPClientOption
	if m.Secrets != nil {
		opts = append(opts, promconfig.WithSecretManager(m.Secrets))
	}
	rt, err := promconfig.NewRoundTripperFromConfig(*m.HTTP, "ebb-metrics-check", opts...)
	if err != nil {
		return nil, fmt.Errorf("metrics check of %q: auth: %w", m.Query, err)
	}
	return rt, nil
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
func (m MetricsCheck) evaluate(ctx context.Context, rt http.RoundTripper) error {
	samples, err := m.query(ctx, rt)
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

// query asks Prometheus's query API (client_golang's api/prometheus/v1) for the query's value
// now, through rt, which carries the check's auth.
func (m MetricsCheck) query(ctx context.Context, rt http.RoundTripper) ([]promSample, error) {
	ctx, cancel := context.WithTimeout(ctx, min(max(m.Interval, time.Second), 10*time.Second))
	defer cancel()
	at := redact.URL(m.Prometheus) // reasons are recorded and shown: the URL may hold a token
	client, err := promapi.NewClient(promapi.Config{Address: m.Prometheus, RoundTripper: rt})
	if err != nil {
		return nil, fmt.Errorf("query prometheus at %s: %s", at, redact.Text(err.Error()))
	}
	value, _, _, err := promv1.NewAPI(client).Query(ctx, m.Query, time.Now())
	var perr *promv1.Error
	switch {
	case errors.As(err, &perr) && perr.Type == promv1.ErrBadData:
		// A syntax error does not heal within the window.
		return nil, verificationFailed(metricsCheckName, "prometheus rejected the query: %s (query: %s)", perr.Msg, m.Query)
	case errors.As(err, &perr) && (strings.HasSuffix(perr.Msg, ": 401") || strings.HasSuffix(perr.Msg, ": 403")):
		return nil, fmt.Errorf("prometheus at %s refused ebb's credentials (%s): check verify.metrics.auth", at, perr.Msg)
	case errors.As(err, &perr):
		return nil, fmt.Errorf("prometheus at %s answered %s: %s", at, perr.Type, perr.Msg)
	case err != nil:
		return nil, fmt.Errorf("prometheus at %s unreachable: %s", at, redact.Text(withoutURL(err).Error()))
	}
	return samplesOf(value)
}

// samplesOf reads a vector or scalar result; a matrix or string cannot be compared to bounds.
func samplesOf(v prommodel.Value) ([]promSample, error) {
	switch v := v.(type) {
	case *prommodel.Scalar:
		return []promSample{{value: float64(v.Value)}}, nil
	case prommodel.Vector:
		out := make([]promSample, 0, len(v))
		for _, s := range v {
			metric := make(map[string]string, len(s.Metric))
			for k, val := range s.Metric {
				metric[string(k)] = string(val)
			}
			out = append(out, promSample{value: float64(s.Value), labels: promLabels(metric)})
		}
		return out, nil
	case nil:
		return nil, errors.New("query returned nothing")
	}
	return nil, fmt.Errorf("query returned a %s; want an instant vector or a scalar", v.Type())
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
