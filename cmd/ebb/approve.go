package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/reconciler"
)

// decideFlags are the flags of `ebb approve` and `ebb reject`.
type decideFlags struct {
	records recordFlags
	stage   string
	comment string
}

func newApproveCommand() *cobra.Command { return newDecideCommand(true) }

func newRejectCommand() *cobra.Command { return newDecideCommand(false) }

// newDecideCommand builds `ebb approve` (approved) or `ebb reject`. The decision is recorded in
// the caller's Kubernetes identity; the API server refuses it unless the caller is an approver.
func newDecideCommand(approved bool) *cobra.Command {
	var f decideFlags
	verb, effect := "approve", "lets the stage continue"
	if !approved {
		verb, effect = "reject", "fails the stage; it rolls back if it already changed the cluster"
	}
	cmd := &cobra.Command{
		Use:   verb + " NAME#N [--stage S] [--comment TEXT]",
		Short: strings.ToUpper(verb[:1]) + verb[1:] + " the stage an execution waits for, as your Kubernetes user; " + effect,
		Example: fmt.Sprintf(`  ebb %s web#3
  ebb %s web#3 --stage prod --comment "checked the dashboards"`, verb, verb),
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, _, err := reconciler.ParseDisplayName(args[0]); err != nil {
				return usageErrorf("%v", err)
			}
			return decide(cmd, args[0], approved, f)
		},
	}
	f.records.add(cmd)
	cmd.ValidArgsFunction = completeExecutions(&f.records)
	cmd.Flags().StringVar(&f.stage, "stage", "", "the stage to decide, when the execution waits in several")
	cmd.Flags().StringVar(&f.comment, "comment", "", "why, recorded with the decision")
	return cmd
}

// decide finds the open approval of the execution, checks it can still be decided, and records
// the decision in the caller's name.
func decide(cmd *cobra.Command, execution string, approved bool, f decideFlags) error {
	ctx := cmd.Context()
	cfg, err := f.records.restConfig()
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	store := reconciler.NewStore(dyn, f.records.namespace)
	caller, err := whoAmI(ctx, cs)
	if err != nil {
		return err
	}
	a, err := openApproval(ctx, store, execution, f.stage, f.records.namespace)
	if err != nil {
		return err
	}
	if a.Expired(time.Now()) {
		return fmt.Errorf("the approval of %s stage %s expired at %s; it can no longer be decided",
			execution, a.Spec.Stage, a.Spec.ExpiresAt.UTC().Format(time.RFC3339))
	}
	decided, err := store.Decide(ctx, a.Name, approved, caller, f.comment)
	if err != nil {
		return deniedError(execution, a.Spec.Stage, caller, approved, err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s %s stage %s as %s\n", pastTense(decided.Spec.Decision.Approved), execution, decided.Spec.Stage, caller)
	return nil
}

// whoAmI asks the API server who the caller is (a SelfSubjectReview), so the decision names the
// identity the server authenticated, which is also the one its admission policy checks.
func whoAmI(ctx context.Context, cs kubernetes.Interface) (string, error) {
	review, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("ask the API server who you are (SelfSubjectReview): %w", err)
	}
	if review.Status.UserInfo.Username == "" {
		return "", errors.New("ask the API server who you are: it named no user")
	}
	return review.Status.UserInfo.Username, nil
}

// openApproval returns the undecided approval of the execution: the one of stage when given,
// else the only undecided one.
func openApproval(ctx context.Context, store *reconciler.Store, execution, stage, namespace string) (*reconciler.Approval, error) {
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
				execution, stage, pastTense(d.Approved), d.By, d.At.UTC().Format(time.RFC3339))
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
	return nil, usageErrorf("%s waits for approval in several stages (%s); choose one with --stage", execution, stages(open))
}

// noApproval explains why an execution has no approval: it does not exist, or it never asked.
func noApproval(ctx context.Context, store *reconciler.Store, execution, namespace string) error {
	_, err := store.GetExecution(ctx, reconciler.ObjectName(execution))
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("execution %s not found in namespace %s", execution, namespace)
	}
	return fmt.Errorf("%s waits for no approval in namespace %s", execution, namespace)
}

// deniedError says clearly when the API server refused the decision, with its message.
func deniedError(execution, stage, caller string, approved bool, err error) error {
	verb := "approve"
	if !approved {
		verb = "reject"
	}
	var status apierrors.APIStatus
	if (apierrors.IsForbidden(err) || apierrors.IsInvalid(err)) && errors.As(err, &status) {
		return fmt.Errorf("the API server refused to let %s %s %s stage %s: %s", caller, verb, execution, stage, status.Status().Message)
	}
	return fmt.Errorf("%s %s stage %s as %s: %w", verb, execution, stage, caller, err)
}

func pastTense(approved bool) string {
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
		parts[i] = a.Spec.Stage + " " + pastTense(a.Spec.Decision.Approved) + " by " + a.Spec.Decision.By
	}
	return strings.Join(parts, "; ")
}
