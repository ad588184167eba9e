package reconciler

import (
	"context"
	"fmt"
	"sort"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// ApprovalResource is the resource of Approval objects (charts/ebb/crds/approvals.yaml).
var ApprovalResource = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "approvals"}

// LabelExecution names, on an Approval, the object name of the execution it gates.
const LabelExecution = "ebb.dev/execution"

// Approval is one stage of one execution waiting for a person's decision. The daemon creates
// it without a decision; an approver sets Spec.Decision once. The API server, not the CLI,
// enforces who may decide (charts/ebb/files/approval-policy.yaml): only the decision may
// change, only once, only by a listed approver, and only in the caller's own name.
type Approval struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ApprovalSpec `json:"spec"`
}

// ApprovalSpec says what waits for whom, until when, and what was decided.
type ApprovalSpec struct {
	// Execution is the object name of the execution, e.g. web-3.
	Execution string `json:"execution"`
	// DisplayName is the execution's name as people use it, e.g. web#3.
	DisplayName string `json:"displayName,omitempty"`
	Pipeline    string `json:"pipeline"`
	Stage       string `json:"stage"`
	// Approvers are user names, and groups written "group:<name>".
	Approvers []string `json:"approvers"`
	// ExpiresAt is when the execution is canceled if nobody decided.
	ExpiresAt metav1.Time `json:"expiresAt"`
	// Decision is absent until someone decides; it is final once set.
	Decision *Decision `json:"decision,omitempty"`
}

// Decision is who approved or rejected, when, and why.
type Decision struct {
	Approved bool `json:"approved"`
	// By is the Kubernetes user name of the approver, as the API server authenticated them.
	By      string      `json:"by"`
	At      metav1.Time `json:"at"`
	Comment string      `json:"comment,omitempty"`
}

// Expired reports whether the approval can no longer be decided at now.
func (a *Approval) Expired(now time.Time) bool { return !now.Before(a.Spec.ExpiresAt.Time) }

// ApprovalName is the object name of the approval of a stage of an execution.
func ApprovalName(execution, stage string) string { return ObjectName(execution + "-" + stage) }

func (s *Store) approvals() dynamic.ResourceInterface {
	return s.client.Resource(ApprovalResource).Namespace(s.namespace)
}

// CreateApproval creates a, named and labelled after its execution and stage, and returns the
// stored object. When it exists already (a restarted daemon asks again) it returns the
// existing one, decision included.
func (s *Store) CreateApproval(ctx context.Context, a *Approval) (*Approval, error) {
	a.APIVersion, a.Kind = Group+"/"+Version, "Approval"
	a.Name, a.Namespace = ApprovalName(a.Spec.Execution, a.Spec.Stage), s.namespace
	if a.Labels == nil {
		a.Labels = map[string]string{}
	}
	a.Labels[LabelPipeline] = labelValue(a.Spec.Pipeline)
	a.Labels[LabelExecution] = labelValue(a.Spec.Execution)
	a.Labels[LabelStage] = labelValue(a.Spec.Stage)
	u, err := toUnstructured(a)
	if err != nil {
		return nil, err
	}
	created, err := s.approvals().Create(ctx, u, metav1.CreateOptions{FieldManager: FieldManager})
	if apierrors.IsAlreadyExists(err) {
		return s.GetApproval(ctx, a.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("create approval of stage %q of %s: %w", a.Spec.Stage, a.Spec.Execution, err)
	}
	return approvalFrom(created)
}

// GetApproval reads the approval with object name name. A missing one is an error that
// apierrors.IsNotFound recognises.
func (s *Store) GetApproval(ctx context.Context, name string) (*Approval, error) {
	u, err := s.approvals().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get approval %s: %w", name, err)
	}
	return approvalFrom(u)
}

// ListApprovals lists the approvals of the execution with object name execution, by stage
// name.
func (s *Store) ListApprovals(ctx context.Context, execution string) ([]Approval, error) {
	return s.listApprovals(ctx, labels.Set{LabelExecution: labelValue(execution)})
}

// ApprovalFor returns the approval of stage of the execution with object name execution. A
// missing one is an error that apierrors.IsNotFound recognises.
func (s *Store) ApprovalFor(ctx context.Context, execution, stage string) (*Approval, error) {
	list, err := s.listApprovals(ctx, labels.Set{LabelExecution: labelValue(execution), LabelStage: labelValue(stage)})
	if err != nil {
		return nil, err
	}
	for i := range list {
		if list[i].Spec.Execution == execution && list[i].Spec.Stage == stage {
			return &list[i], nil
		}
	}
	return nil, apierrors.NewNotFound(ApprovalResource.GroupResource(), ApprovalName(execution, stage))
}

func (s *Store) listApprovals(ctx context.Context, selector labels.Set) ([]Approval, error) {
	list, err := s.approvals().List(ctx, metav1.ListOptions{LabelSelector: selector.String()})
	if err != nil {
		return nil, fmt.Errorf("list approvals %s: %w", selector, err)
	}
	out := make([]Approval, 0, len(list.Items))
	for i := range list.Items {
		a, err := approvalFrom(&list.Items[i])
		if err != nil {
			return nil, err
		}
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Spec.Stage < out[j].Spec.Stage })
	return out, nil
}

// Decide records a decision by the user named by on the approval with object name name, with
// the object's resourceVersion, and returns the stored object. The API server refuses it
// (Forbidden or Invalid, with the policy's message) unless by is the caller and a listed
// approver and the approval was still undecided.
func (s *Store) Decide(ctx context.Context, name string, approved bool, by, comment string) (*Approval, error) {
	a, err := s.GetApproval(ctx, name)
	if err != nil {
		return nil, err
	}
	a.Spec.Decision = &Decision{Approved: approved, By: by, At: metav1.Now(), Comment: comment}
	u, err := toUnstructured(a)
	if err != nil {
		return nil, err
	}
	updated, err := s.approvals().Update(ctx, u, metav1.UpdateOptions{FieldManager: FieldManager})
	if err != nil {
		return nil, fmt.Errorf("record decision on approval %s: %w", name, err)
	}
	return approvalFrom(updated)
}

func approvalFrom(u *unstructured.Unstructured) (*Approval, error) {
	a := &Approval{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, a); err != nil {
		return nil, fmt.Errorf("read approval %s: %w", u.GetName(), err)
	}
	return a, nil
}
