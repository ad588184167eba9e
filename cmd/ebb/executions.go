package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"ebb.dev/ebb/internal/redact"
	"ebb.dev/ebb/reconciler"
)

// recordFlags locate the execution records: the cluster and namespace ebb runs in.
type recordFlags struct {
	kubeconfig, namespace string
}

func (f *recordFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig of the cluster ebb runs in (default: $KUBECONFIG or in-cluster)")
	cmd.Flags().StringVarP(&f.namespace, "namespace", "n", "ebb-system", "namespace of the execution records")
}

func (f *recordFlags) store() (*reconciler.Store, error) {
	dyn, err := f.client()
	if err != nil {
		return nil, err
	}
	return reconciler.NewStore(dyn, f.namespace), nil
}

func (f *recordFlags) client() (dynamic.Interface, error) {
	cfg, err := restConfig(f.kubeconfig)
	if err != nil {
		return nil, err
	}
	return dynamic.NewForConfig(cfg)
}

func newExecutionsCommand() *cobra.Command {
	var (
		rf       recordFlags
		pipeline string
		output   string
		follow   bool
	)
	cmd := &cobra.Command{
		Use:   "executions [--pipeline P] [-o wide|yaml|json] [--watch]",
		Short: "List executions, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "", "wide", "yaml", "json"); err != nil {
				return err
			}
			if follow {
				if output != "" && output != "wide" {
					return usageErrorf("--watch draws the table: -o %s cannot be watched", output)
				}
				return watchTable(cmd, rf, pipeline, output == "wide")
			}
			store, err := rf.store()
			if err != nil {
				return err
			}
			list, err := store.ListExecutions(cmd.Context(), pipeline)
			if err != nil {
				return err
			}
			switch output {
			case "yaml", "json":
				return printObject(cmd.OutOrStdout(), output, map[string]any{"apiVersion": "v1", "kind": "List", "items": list})
			}
			printExecutions(cmd.OutOrStdout(), list, output == "wide", time.Now())
			return nil
		},
	}
	rf.add(cmd)
	cmd.Flags().StringVar(&pipeline, "pipeline", "", "only the executions of this pipeline")
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: wide, yaml or json")
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
		output string
		follow bool
	)
	cmd := &cobra.Command{
		Use:   "execution NAME#N [-o yaml|json] [--watch]",
		Short: "Show one execution's stages and tasks, with statuses, durations, messages and comments",
		Example: `  ebb execution web#3
  ebb execution web_dev_rollback#1 -o yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "", "yaml", "json"); err != nil {
				return err
			}
			if _, _, err := reconciler.ParseDisplayName(args[0]); err != nil {
				return usageErrorf("%v", err)
			}
			if follow {
				if output != "" {
					return usageErrorf("--watch draws the tree: -o %s cannot be watched", output)
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
			if output != "" {
				return printObject(cmd.OutOrStdout(), output, x)
			}
			printExecutionTree(cmd.OutOrStdout(), x, time.Now())
			return nil
		},
	}
	rf.add(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: yaml or json")
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

func printObject(w io.Writer, format string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if format == "yaml" {
		if data, err = yaml.JSONToYAML(data); err != nil {
			return err
		}
	} else {
		data = append(data, '\n')
	}
	// Records written before URLs were redacted where they are made may still hold one.
	_, err = io.WriteString(w, redact.Text(string(data)))
	return err
}

func checkOutput(got string, allowed ...string) error {
	for _, a := range allowed {
		if got == a {
			return nil
		}
	}
	return usageErrorf("--output %q: want one of %s", got, strings.Join(allowed[1:], ", "))
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
