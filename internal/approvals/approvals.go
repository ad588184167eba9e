// Package approvals records a person's decision on an execution's Approval in their own
// Kubernetes identity. `ebb approve`, `ebb reject` and the dashboard decide through it, so they
// find the open approval, refuse an expired one and report the API server's refusal the same
// way. The API server, not this package, decides who may approve
// (charts/ebb/files/approval-policy.yaml).
package approvals

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/reconciler"
)

// Request is one decision on the approval of an execution.
type Request struct {
	// Execution is the execution's display name, e.g. web#3.
	Execution string
	// Stage is the stage to decide; "" picks the only stage that waits.
	Stage    string
	Approved bool
	Comment  string
	// Namespace is the records' namespace, for messages.
	Namespace string
}

// ChoiceError says an execution waits in several stages and the caller must choose one.
type ChoiceError struct{ msg string }

func (e *ChoiceError) Error() string { return e.msg }

// DeniedError is the API server's refusal of a decision (its admission policy or RBAC).
type DeniedError struct {
	// Message is the API server's own message.
	Message string
	msg     string
}

func (e *DeniedError) Error() string { return e.msg }

// Decide records req's decision in the caller's name, the identity the API server
// authenticates (asked of it with a SelfSubjectReview), and returns the stored approval and
// that name.
func Decide(ctx context.Context, cs kubernetes.Interface, store *reconciler.Store, req Request, now time.Time) (*reconciler.Approval, string, error) {
	caller, err := WhoAmI(ctx, cs)
	if err != nil {
		return nil, "", err
	}
	a, err := Open(ctx, store, req.Execution, req.Stage, req.Namespace)
	if err != nil {
		return nil, caller, err
	}
	if a.Expired(now) {
		return nil, caller, fmt.Errorf("the approval of %s stage %s expired at %s; it can no longer be decided",
			req.Execution, a.Spec.Stage, a.Spec.ExpiresAt.UTC().Format(time.RFC3339))
	}
	decided, err := store.Decide(ctx, a.Name, req.Approved, caller, req.Comment)
	if err != nil {
		return nil, caller, denied(req.Execution, a.Spec.Stage, caller, req.Approved, err)
	}
	return decided, caller, nil
}

// WhoAmI asks the API server who the caller is (a SelfSubjectReview), so the decision names the
// identity the server authenticated, which is also the one its admission policy checks.
func WhoAmI(ctx context.Context, cs kubernetes.Interface) (string, error) {
	review, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("ask the API server who you are (SelfSubjectReview): %w", err)
	}
	if review.Status.UserInfo.Username == "" {
		return "", errors.New("ask the API server who you are: it named no user")
	}
	return review.Status.UserInfo.Username, nil
}

// Open returns the undecided approval of the execution (a display name): the one of stage when
// given, else the only undecided one. Several undecided ones without a stage are a
// *ChoiceError.
func Open(ctx context.Context, store *reconciler.Store, execution, stage, namespace string) (*reconciler.Approval, error) {
	list, err := store.ListApprovals(ctx, reconciler.ObjectName(execution))
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, noApproval(ctx, store, execution, namespace)
	}
	var open []reconciler.Approval
	for _, a := range list {
		if stage != "" && a.Spec.Stage != stage {
			continue
		}
		if d := a.Spec.Decision; d != nil && stage != "" {
			return nil, fmt.Errorf("the approval of %s stage %s was already %s by %s at %s; a decision is final",
				execution, stage, PastTense(d.Approved), d.By, d.At.UTC().Format(time.RFC3339))
		}
		if a.Spec.Decision == nil {
			open = append(open, a)
		}
	}
	switch {
	case len(open) == 1:
		return &open[0], nil
	case stage != "":
		return nil, fmt.Errorf("%s has no approval for stage %s (stages: %s)", execution, stage, stages(list))
	case len(open) == 0:
		return nil, fmt.Errorf("%s waits for no approval: every approval was decided (%s)", execution, decisions(list))
	}
	return nil, &ChoiceError{msg: fmt.Sprintf("%s waits for approval in several stages (%s); choose one with --stage", execution, stages(open))}
}

// noApproval explains why an execution has no approval: it does not exist, or it never asked.
func noApproval(ctx context.Context, store *reconciler.Store, execution, namespace string) error {
	_, err := store.GetExecution(ctx, reconciler.ObjectName(execution))
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("execution %s not found in namespace %s", execution, namespace)
	}
	return fmt.Errorf("%s waits for no approval in namespace %s", execution, namespace)
}

// denied says clearly when the API server refused the decision, with its message.
func denied(execution, stage, caller string, approved bool, err error) error {
	verb := "approve"
	if !approved {
		verb = "reject"
	}
	var status apierrors.APIStatus
	if (apierrors.IsForbidden(err) || apierrors.IsInvalid(err)) && errors.As(err, &status) {
		msg := status.Status().Message
		return &DeniedError{Message: msg, msg: fmt.Sprintf("the API server refused to let %s %s %s stage %s: %s", caller, verb, execution, stage, msg)}
	}
	return fmt.Errorf("%s %s stage %s as %s: %w", verb, execution, stage, caller, err)
}

// PastTense is "approved" or "rejected".
func PastTense(approved bool) string {
	if approved {
		return "approved"
	}
	return "rejected"
}

func stages(list []reconciler.Approval) string {
	names := make([]string, len(list))
	for i, a := range list {
		names[i] = a.Spec.Stage
	}
	return strings.Join(names, ", ")
}

func decisions(list []reconciler.Approval) string {
	parts := make([]string, len(list))
	for i, a := range list {
		parts[i] = a.Spec.Stage + " " + PastTense(a.Spec.Decision.Approved) + " by " + a.Spec.Decision.By
	}
	return strings.Join(parts, "; ")
}
