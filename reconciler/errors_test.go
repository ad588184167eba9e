package reconciler

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"ebb.dev/ebb/internal/ssa"
)

func TestClassify(t *testing.T) {
	deploy := schema.GroupResource{Group: "apps", Resource: "deployments"}
	object := func(err error) error {
		return &taskError{task: TaskUpdateDeployment, err: &ssa.ObjectError{Verb: "apply", Object: ssa.ObjMeta{Kind: "Deployment", Name: "web"}, Cluster: "dev", Err: err}}
	}
	denied := apierrors.NewForbidden(deploy, "web", errors.New(`ValidatingAdmissionPolicy 'no-latest' with binding 'b' denied request: no :latest tags`))
	webhook := apierrors.NewBadRequest(`admission webhook "validate.example.com" denied the request: nope`)
	refused := &url.Error{Op: "Get", URL: "https://127.0.0.1:1", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}}
	tests := []struct {
		name string
		err  error
		want FailureClass
	}{
		{"verification", &taskError{task: TaskVerifyDeployment, err: verificationFailed("rollout", "ProgressDeadlineExceeded")}, FailureVerification},
		{"rejected", &rejectedError{by: "alice"}, FailureVerification},
		{"invalid", object(apierrors.NewInvalid(schema.GroupKind{Group: "apps", Kind: "Deployment"}, "web", field.ErrorList{field.Invalid(field.NewPath("spec", "selector"), "x", "field is immutable")})), FailureStalled},
		{"admission policy", object(denied), FailureStalled},
		{"admission webhook", object(webhook), FailureStalled},
		{"unknown kind", object(&meta.NoKindMatchError{GroupKind: schema.GroupKind{Group: "example.com", Kind: "Widget"}}), FailureStalled},
		{"no Service", &taskError{task: TaskDeployGreen, err: stalled("the blue-green model needs a Service")}, FailureStalled},
		{"unknown cluster", &taskError{task: TaskCreateResources, err: &UnknownClusterError{Name: "qa"}}, FailureStalled},
		{"forbidden", object(apierrors.NewForbidden(schema.GroupResource{Resource: "configmaps"}, "", errors.New(`User "ebb" cannot list resource "configmaps"`))), FailureWaiting},
		{"unauthorized", object(apierrors.NewUnauthorized("token expired")), FailureWaiting},
		{"throttled", object(apierrors.NewTooManyRequests("slow down", 1)), FailureWaiting},
		{"internal", object(apierrors.NewInternalError(errors.New("etcdserver: leader changed"))), FailureWaiting},
		{"unavailable", object(apierrors.NewServiceUnavailable("starting")), FailureWaiting},
		{"timeout", object(apierrors.NewTimeoutError("slow", 1)), FailureWaiting},
		{"conflict", object(apierrors.NewConflict(deploy, "web", errors.New("changed"))), FailureWaiting},
		{"connection refused", object(refused), FailureWaiting},
		{"deadline", fmt.Errorf("get: %w", context.DeadlineExceeded), FailureWaiting},
		{"no watch", &WaitingError{Err: errors.New("no answer within 5m")}, FailureWaiting},
		{"status 418", object(&apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: 418, Reason: "Teapot"}}), ""},
		{"unknown", errors.New("something else"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, classify(tt.err), tt.err.Error())
		})
	}
}
