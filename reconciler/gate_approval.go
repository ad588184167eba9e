package reconciler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/planner"
)

// TaskApproval is the task that holds a stage until a person decides.
const TaskApproval = "Wait for approval"

// approvalPoll is how often a pending approval is read.
const approvalPoll = 250 * time.Millisecond

// rejectedError is a person's rejection of a stage: it fails the stage like a failed check.
type rejectedError struct {
	by, comment string
}

func (e *rejectedError) Error() string {
	if e.comment == "" {
		return "rejected by " + e.by
	}
	return fmt.Sprintf("rejected by %s: %s", e.by, e.comment)
}

// expiredError is an approval nobody gave in time: the execution is CANCELED.
type expiredError struct {
	at time.Time
}

func (e *expiredError) Error() string {
	return "the approval expired at " + e.at.UTC().Format(time.RFC3339) + " without a decision"
}

// approvalGate holds the stage, when it asks for an approval, until a listed approver
// approves (the execution waits as WAITING, with an Approval object naming the approvers and
// the expiry), rejects (a rejectedError fails the stage) or the approval expires.
type approvalGate struct{}

func (approvalGate) name() string { return "approval" }

func (approvalGate) applies(_ *stageRun, sub subject) bool { return sub.at == atPromote }

func (approvalGate) check(ctx context.Context, s *stageRun, _ subject) error {
	return s.awaitApproval(ctx, s.pipeline, s.stage(), s.stage().Approval)
}

func (e *run) awaitApproval(ctx context.Context, pipeline string, stage *planner.Stage, a *planner.Approval) error {
	timeout := a.Timeout.Duration
	if timeout <= 0 {
		timeout = 24 * time.Hour
	}
	req := &Approval{Spec: ApprovalSpec{
		Execution: e.x.Name, DisplayName: e.x.Spec.DisplayName, Pipeline: pipeline, Stage: stage.Name,
		Approvers: a.Approvers, ExpiresAt: metav1.NewTime(time.Now().Add(timeout).Truncate(time.Second)),
	}}
	approval, err := e.r.store.CreateApproval(ctx, req)
	if err != nil {
		return err
	}
	if err := e.setPhase(ctx, Waiting, fmt.Sprintf("stage %s waits for approval by %s until %s (ebb approve %s)",
		stage.Name, strings.Join(a.Approvers, ", "), approval.Spec.ExpiresAt.UTC().Format(time.RFC3339), e.x.Spec.DisplayName)); err != nil {
		return err
	}
	// Waiting for a person takes no slot from executions that can run.
	e.slot.free()
	defer func() {
		if err := e.slot.take(ctx); err != nil && ctx.Err() == nil {
			e.log.Warn("take a slot after the approval", "err", err)
		}
	}()
	for {
		if dec := approval.Spec.Decision; dec != nil {
			if !dec.Approved {
				return &rejectedError{by: dec.By, comment: dec.Comment}
			}
			comment := "approved by " + dec.By
			if dec.Comment != "" {
				comment += ": " + dec.Comment
			}
			return e.setPhase(ctx, Running, comment)
		}
		if time.Now().After(approval.Spec.ExpiresAt.Time) {
			return &expiredError{at: approval.Spec.ExpiresAt.Time}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(approvalPoll):
		}
		next, err := e.r.store.GetApproval(ctx, approval.Name)
		if err != nil {
			if ctx.Err() == nil {
				e.log.Warn("read approval; trying again", "approval", approval.Name, "err", err)
			}
			continue
		}
		approval = next
	}
}

func isRejected(err error) bool {
	var r *rejectedError
	return errors.As(err, &r)
}

func isExpired(err error) bool {
	var x *expiredError
	return errors.As(err, &x)
}
