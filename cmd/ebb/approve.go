package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/approvals"
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

// decide records the decision on the execution's open approval in the caller's name.
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
	req := approvals.Request{Execution: execution, Stage: f.stage, Approved: approved, Comment: f.comment, Namespace: f.records.namespace}
	decided, caller, err := approvals.Decide(ctx, cs, store, req, time.Now())
	var choose *approvals.ChoiceError
	if errors.As(err, &choose) {
		return usageErrorf("%v", err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s %s stage %s as %s\n", approvals.PastTense(decided.Spec.Decision.Approved), execution, decided.Spec.Stage, caller)
	return nil
}
