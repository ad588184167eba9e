package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/util/duration"

	"ebb.dev/ebb/reconciler"
)

func newPipelinesCommand() *cobra.Command {
	var (
		rf     recordFlags
		output outputFlags
	)
	cmd := &cobra.Command{
		Use:   "pipelines [-o wide|yaml|json|name|jsonpath=...]",
		Short: "List the pipelines found in Git, with whether each is in sync and why not",
		Long: `List the Pipeline objects the daemon writes, one per pipeline found in Git: whether it is
Ready, the reason (Succeeded, Running, InvalidPipeline, RemovedFromGit, ...), the last commit
planned and the Ready condition's message, which names an invalid file's errors at
file:line:col. -o yaml shows each stage's current, last known-good and quarantined releases.`,
		Example: `  ebb pipelines -n ebb-system
  ebb pipelines -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := output.validate(); err != nil {
				return err
			}
			store, err := rf.store()
			if err != nil {
				return err
			}
			list, err := store.ListPipelines(cmd.Context())
			if err != nil {
				return err
			}
			if table, wide := output.table(); table {
				printPipelines(cmd.OutOrStdout(), list, wide, time.Now())
				return nil
			}
			objects := make([]any, len(list))
			for i := range list {
				objects[i] = &list[i]
			}
			return output.printObjects(cmd.OutOrStdout(), "Pipeline", true, objects...)
		},
	}
	rf.add(cmd)
	output.add(cmd, "wide")
	return cmd
}

// printPipelines writes the pipelines table, as `kubectl get pipelines` shows it, with the
// pipelines' names as written in Git.
func printPipelines(w io.Writer, list []reconciler.Pipeline, wide bool, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	header := "NAME\tREADY\tSTATUS\tCOMMIT\tAGE\tMESSAGE"
	if wide {
		header += "\tFILE\tENABLED"
	}
	fmt.Fprintln(tw, header)
	for _, p := range list {
		ready, reason, msg := "-", "-", ""
		if c := meta.FindStatusCondition(p.Status.Conditions, reconciler.ConditionReady); c != nil {
			ready, reason, msg = string(c.Status), c.Reason, c.Message
		}
		if !wide {
			msg = cell(msg)
		}
		commit := "-"
		if c := p.Status.LastPlannedCommit; c != nil {
			commit = orDash(c.ShortSHA)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s", orDash(p.Spec.Pipeline), ready, reason, commit,
			duration.HumanDuration(now.Sub(p.CreationTimestamp.Time)), msg)
		if wide {
			fmt.Fprintf(tw, "\t%s\t%t", orDash(p.Spec.File), p.Spec.Enabled)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}
