package reconciler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"ebb.dev/ebb/internal/redact"
)

// VerificationError says a release was checked and found bad: the stage rolls back.
type VerificationError struct {
	// Check is what failed: "rollout", "healthCheck", "metrics" or "traffic".
	Check  string
	Reason string
}

func (e *VerificationError) Error() string { return e.Check + ": " + e.Reason }

func verificationFailed(check, format string, args ...any) error {
	return &VerificationError{Check: check, Reason: fmt.Sprintf(format, args...)}
}

// rolloutState reads a Deployment's status the way `kubectl rollout status` does, with one
// difference: a ProgressDeadlineExceeded condition last updated before since (plus the
// second its timestamps are rounded to) belongs to an earlier rollout, such as the failed one
// a rollback replaces, and is not this rollout's failure.
func rolloutState(d *appsv1.Deployment, since time.Time) (done bool, why string, failed bool) {
	if d.Generation > d.Status.ObservedGeneration {
		return false, "waiting for the controller to observe the new generation", false
	}
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded" {
			if c.LastUpdateTime.Time.Before(since.Add(time.Second)) {
				return false, "waiting for progress (the controller still reports an earlier rollout's deadline)", false
			}
			return false, "ProgressDeadlineExceeded: " + c.Message, true
		}
	}
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	switch {
	case s.UpdatedReplicas < want:
		return false, fmt.Sprintf("%d of %d replicas updated", s.UpdatedReplicas, want), false
	case s.Replicas > s.UpdatedReplicas:
		return false, fmt.Sprintf("%d old replicas pending termination", s.Replicas-s.UpdatedReplicas), false
	case s.ReadyReplicas < want:
		return false, fmt.Sprintf("%d of %d updated replicas ready", s.ReadyReplicas, want), false
	case s.AvailableReplicas < want:
		return false, fmt.Sprintf("%d of %d updated replicas available", s.AvailableReplicas, want), false
	}
	return true, "rolled out", false
}

// HealthCheck polls an HTTP URL: it passes after Successes answers in 2xx, and fails after
// Failures consecutive other answers (or errors), or when Timeout passes first.
type HealthCheck struct {
	URL       string
	Interval  time.Duration
	Successes int
	Failures  int
	Timeout   time.Duration
}

// Run performs the check. Its failures are VerificationErrors.
func (h HealthCheck) Run(ctx context.Context, client *http.Client) error {
	if client == nil {
		client = http.DefaultClient
	}
	deadline := time.Now().Add(h.Timeout)
	successes, failures := 0, 0
	var last string
	for {
		ok, detail := h.probe(ctx, client)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if ok {
			successes++
			failures = 0
			if successes >= h.Successes {
				return nil
			}
		} else {
			failures++
			last = detail
			if failures >= h.Failures {
				return verificationFailed("healthCheck", "%s failed %d times in a row, last: %s", redact.URL(h.URL), failures, detail)
			}
		}
		if time.Now().Add(h.Interval).After(deadline) {
			return verificationFailed("healthCheck", "%s: %d of %d successes within %s (last failure: %s)", redact.URL(h.URL), successes, h.Successes, h.Timeout, orNone(last))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(h.Interval):
		}
	}
}

func (h HealthCheck) probe(ctx context.Context, client *http.Client) (bool, string) {
	// One answer may take up to 5s, however short the interval between probes.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.URL, nil)
	if err != nil {
		return false, redact.Text(err.Error()) // a parse error quotes the URL
	}
	resp, err := client.Do(req)
	if err != nil {
		// A *url.Error repeats the URL, credentials included: keep only its cause.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			return false, redact.Text(uerr.Err.Error())
		}
		return false, redact.Text(err.Error())
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return false, "HTTP " + resp.Status
	}
	return true, ""
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
