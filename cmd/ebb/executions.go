package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"

	"ebb.dev/ebb/internal/redact"
	"ebb.dev/ebb/reconciler"
)

func newExecutionsCommand() *cobra.Command {
	var (
		rf       recordFlags
		pipeline string
		output   outputFlags
		follow   bool
	)
	cmd := &cobra.Command{
		Use:   "executions [--pipeline P] [-o wide|yaml|json|name|jsonpath=...] [--watch]",
		Short: "List executions, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := output.validate(); err != nil {
				return err
			}
			if follow {
				table, wide := output.table()
				if !table {
					return usageErrorf("--watch draws the table: -o %s cannot be watched", output.format())
				}
				return watchTable(cmd, rf, pipeline, wide)
			}
			store, err := rf.store()
			if err != nil {
				return err
			}
			list, err := store.ListExecutions(cmd.Context(), pipeline)
			if err != nil {
				return err
			}
			if table, wide := output.table(); table {
				printExecutions(cmd.OutOrStdout(), list, wide, time.Now())
				return nil
			}
			objects := make([]any, len(list))
			for i := range list {
				objects[i] = &list[i]
			}
			return output.printObjects(cmd.OutOrStdout(), "Execution", true, objects...)
		},
	}
	rf.add(cmd)
	cmd.Flags().StringVar(&pipeline, "pipeline", "", "only the executions of this pipeline")
	_ = cmd.RegisterFlagCompletionFunc("pipeline", completePipelines(&rf, false))
	output.add(cmd, "wide")
	cmd.Flags().BoolVarP(&follow, "watch", "w", false, "redraw the table as executions move; exit when none is running")
	return cmd
}

// printExecutions writes the executions table, as `kubectl get executions` shows it, with
// the names people use (<pipeline>#<n>).
func printExecutions(w io.Writer, list []reconciler.Execution, wide bool, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	header := "NAME\tPIPELINE\tSTATUS\tSTAGE\tCOMMIT\tIMAGE\tAGE\tCOMMENT"
	if wide {
		header += "\tOBJECT\tSTARTED\tDURATION"
	}
	fmt.Fprintln(tw, header)
	for _, x := range list {
		comment := redact.Text(x.Status.Comment)
		if !wide {
			comment = cell(comment)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", x.Spec.DisplayName, x.Spec.Pipeline, orDash(string(x.Status.Phase)),
			orDash(x.Status.Stage), orDash(x.Spec.ShortCommit), orDash(x.Status.Image),
			duration.HumanDuration(now.Sub(x.CreationTimestamp.Time)), comment)
		if wide {
			fmt.Fprintf(tw, "\t%s\t%s\t%s", x.Name, timeOrDash(x.Status.StartedAt), span(x.Status.StartedAt, x.Status.FinishedAt, now))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

func newExecutionCommand() *cobra.Command {
	var (
		rf     recordFlags
		output outputFlags
		follow bool
	)
	cmd := &cobra.Command{
		Use:   "execution NAME#N [-o yaml|json|name|jsonpath=...] [--watch]",
		Short: "Show one execution's stages and tasks, with statuses, durations, messages and comments",
		Example: `  ebb execution web#3
  ebb execution web_dev_rollback#1 -o yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := output.validate(); err != nil {
				return err
			}
			if _, _, err := reconciler.ParseDisplayName(args[0]); err != nil {
				return usageErrorf("%v", err)
			}
			if follow {
				if output.format() != "" {
					return usageErrorf("--watch draws the tree: -o %s cannot be watched", output.format())
				}
				return watchTree(cmd, rf, args[0])
			}
			store, err := rf.store()
			if err != nil {
				return err
			}
			x, err := store.GetExecution(cmd.Context(), reconciler.ObjectName(args[0]))
			if apierrors.IsNotFound(err) {
				return fmt.Errorf("execution %s not found in namespace %s", args[0], rf.namespace)
			}
			if err != nil {
				return err
			}
			if table, _ := output.table(); !table {
				return output.printObjects(cmd.OutOrStdout(), "Execution", false, x)
			}
			printExecutionTree(cmd.OutOrStdout(), x, time.Now())
			return nil
		},
	}
	rf.add(cmd)
	cmd.ValidArgsFunction = completeExecutions(&rf)
	output.add(cmd)
	cmd.Flags().BoolVarP(&follow, "watch", "w", false, "redraw the tree as the execution moves; exit when it ends")
	return cmd
}

// printExecutionTree writes an execution as a tree of stages and tasks.
func printExecutionTree(w io.Writer, x *reconciler.Execution, now time.Time) {
	fmt.Fprintf(w, "%s  %s\n", x.Spec.DisplayName, x.Status.Phase)
	fmt.Fprintf(w, "  pipeline:  %s\n", x.Spec.Pipeline)
	fmt.Fprintf(w, "  kind:      %s\n", x.Spec.Kind)
	if x.Spec.Commit != "" {
		fmt.Fprintf(w, "  commit:    %s %s\n", x.Spec.ShortCommit, x.Spec.CommitMessage)
	}
	if x.Status.Image != "" {
		fmt.Fprintf(w, "  image:     %s\n", x.Status.Image)
	}
	fmt.Fprintf(w, "  duration:  %s\n", span(x.Status.StartedAt, x.Status.FinishedAt, now))
	if x.Spec.Parent != "" {
		fmt.Fprintf(w, "  rolls back: %s (stage %s)\n", x.Spec.Parent, x.Spec.Stage)
	}
	if x.Status.Rollback != "" {
		fmt.Fprintf(w, "  rollback:  %s\n", x.Status.Rollback)
	}
	if x.Status.Comment != "" {
		fmt.Fprintf(w, "  comment:   %s\n", redact.Text(x.Status.Comment))
	}
	for i, s := range x.Status.Stages {
		branch, indent := "├─", "│  "
		if i == len(x.Status.Stages)-1 {
			branch, indent = "└─", "   "
		}
		fmt.Fprintf(w, "%s stage %s  %s  %s%s\n", branch, s.Name, orDash(string(s.Status)), span(s.StartedAt, s.FinishedAt, now), message(s.Message))
		for j, t := range s.Tasks {
			tb := "├─"
			if j == len(s.Tasks)-1 {
				tb = "└─"
			}
			fmt.Fprintf(w, "%s%s %s  %s  %s%s\n", indent, tb, t.Name, orDash(string(t.Status)), span(t.StartedAt, t.FinishedAt, now), message(t.Message))
		}
	}
}

func span(start, end *metav1.Time, now time.Time) string {
	if start == nil {
		return "-"
	}
	stop := now
	if end != nil {
		stop = end.Time
	}
	return stop.Sub(start.Time).Round(10 * time.Millisecond).String()
}

func timeOrDash(t *metav1.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func message(m string) string {
	if m == "" {
		return ""
	}
	return "  " + redact.Text(m)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// cell cuts a long comment or message to the 100 characters a table shows (-o wide shows all).
func cell(s string) string {
	if len(s) > 100 {
		return s[:97] + "..."
	}
	return s
}
