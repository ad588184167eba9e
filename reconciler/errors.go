package reconciler

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
)

// StalledError is an error of the release or the pipeline, which only a commit can fix: an
// object the API server refuses, a Service the model needs and the release lacks, a cluster
// the daemon config does not name.
type StalledError struct{ Err error }

func (e *StalledError) Error() string { return e.Err.Error() }
func (e *StalledError) Unwrap() error { return e.Err }

// stalled marks err as the release's or the pipeline's fault.
func stalled(format string, args ...any) error {
	return &StalledError{Err: fmt.Errorf(format, args...)}
}

// WaitingError is a cluster that did not answer in time, where no API error says so.
type WaitingError struct{ Err error }

func (e *WaitingError) Error() string { return e.Err.Error() }
func (e *WaitingError) Unwrap() error { return e.Err }

// UnknownClusterError is a stage naming a cluster the daemon config does not define.
type UnknownClusterError struct{ Name string }

func (e *UnknownClusterError) Error() string {
	return fmt.Sprintf("cluster %q is not defined in the daemon config", e.Name)
}

// classify decides which of the three classes an error of a stage belongs to:
//   - FailureVerification: a check found the release bad, or a person rejected it;
//   - FailureStalled: the API server refused the release as it is (invalid, an immutable
//     field changed, admission denied, an unknown kind or namespace), or the pipeline is
//     wrong (StalledError, UnknownClusterError);
//   - FailureWaiting: the cluster could not answer (unreachable, timed out, overloaded,
//     throttled, an internal error, forbidden or unauthorized: ebb's access may be restored).
//
// Anything else is "" (unclassified): it is retried a few times, then treated as stalled.
func classify(err error) FailureClass {
	var (
		v       *VerificationError
		s       *StalledError
		w       *WaitingError
		unknown *UnknownClusterError
		status  apierrors.APIStatus
	)
	switch {
	case err == nil:
		return ""
	case errors.As(err, &v), isRejected(err):
		return FailureVerification
	case errors.As(err, &w):
		return FailureWaiting
	case errors.As(err, &s), errors.As(err, &unknown), meta.IsNoMatchError(err):
		return FailureStalled
	case admissionDenied(err):
		return FailureStalled
	case apierrors.IsInvalid(err), apierrors.IsBadRequest(err), apierrors.IsRequestEntityTooLargeError(err),
		apierrors.IsMethodNotSupported(err), apierrors.IsNotAcceptable(err), apierrors.IsUnsupportedMediaType(err),
		apierrors.IsAlreadyExists(err), apierrors.IsNotFound(err) && errors.As(err, &status):
		return FailureStalled
	case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err), apierrors.IsTimeout(err), apierrors.IsServerTimeout(err),
		apierrors.IsTooManyRequests(err), apierrors.IsInternalError(err), apierrors.IsServiceUnavailable(err),
		apierrors.IsConflict(err), apierrors.IsUnexpectedServerError(err), apierrors.IsGone(err), apierrors.IsResourceExpired(err):
		return FailureWaiting
	case errors.As(err, &status):
		if code := status.Status().Code; code >= 500 || code == 0 {
			return FailureWaiting
		}
		return ""
	case unreachable(err):
		return FailureWaiting
	}
	return ""
}

// admissionDenied reports whether an admission webhook or policy refused the object: the
// release must change, not ebb's access.
func admissionDenied(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return false
	}
	msg := status.Status().Message
	return strings.Contains(msg, "admission webhook") && strings.Contains(msg, "denied") ||
		strings.Contains(msg, "ValidatingAdmissionPolicy") && strings.Contains(msg, "denied")
}

// unreachable reports whether err is the way to the API server failing: a refused or reset
// connection, a DNS failure, a TLS handshake, a deadline of the request.
func unreachable(err error) bool {
	var (
		urlErr *url.Error
		netErr net.Error
		opErr  *net.OpError
	)
	return errors.As(err, &urlErr) || errors.As(err, &netErr) || errors.As(err, &opErr) ||
		errors.Is(err, context.DeadlineExceeded) ||
		strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "no such host") ||
		strings.Contains(err.Error(), "http2: client connection lost") || strings.Contains(err.Error(), "EOF")
}
