package main

import (
	"strings"

	"github.com/spf13/cobra"

	"ebb.dev/ebb/planner"
)

// Shell completion (cobra's `ebb completion bash|zsh|fish|powershell`) of the names people
// type: executions and pipelines, read from the cluster with the command's own connection flags
// (--kubeconfig, --context, -n), and the deployment models of --model. A cluster that cannot be
// reached completes nothing, and never falls back to file names.

// completeExecutions completes the first argument with the executions' names (web#3).
func completeExecutions(rf *recordFlags) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		store, err := rf.store()
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		list, err := store.ListExecutions(cmd.Context(), "")
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		var names []string
		for _, x := range list {
			if strings.HasPrefix(x.Spec.DisplayName, toComplete) {
				names = append(names, x.Spec.DisplayName)
			}
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

// completePipelines completes with the names of the pipelines found in Git (their Pipeline
// objects); as a ValidArgsFunction it completes the first argument only.
func completePipelines(rf *recordFlags, firstArgOnly bool) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if firstArgOnly && len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		store, err := rf.store()
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		list, err := store.ListPipelines(cmd.Context())
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		var names []string
		for _, p := range list {
			if strings.HasPrefix(p.Spec.Pipeline, toComplete) {
				names = append(names, p.Spec.Pipeline)
			}
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeModels registers the completion of --model, on every command that has it, with the
// deployment models the planner knows.
func completeModels(c *cobra.Command) {
	if c.Flags().Lookup("model") != nil {
		_ = c.RegisterFlagCompletionFunc("model", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return []string{string(planner.ModelRolling), string(planner.ModelBlueGreen)}, cobra.ShellCompDirectiveNoFileComp
		})
	}
	for _, sub := range c.Commands() {
		completeModels(sub)
	}
}
