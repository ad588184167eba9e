package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Exit codes, as kubectl uses them: 1 when the command ran and found a problem (a failed
// validation, an error from the cluster), 2 when it was called wrongly.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// usageError is a wrong call: a bad flag value or argument.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// errSilent fails a command whose problem was already printed.
var errSilent = errors.New("")

// run executes the command line and returns the process exit code.
func run() int {
	return execute(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
}

// execute runs ebb with args and returns the exit code; tests call it with buffers.
func execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := newRootCommand()
	cmd.SetArgs(args)
	cmd.SetIn(stdin)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	err := cmd.ExecuteContext(ctx)
	var usage *usageError
	if code, ok := exitCodeOf(err); ok {
		return code
	}
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "error: %v\nSee '%s --help'.\n", err, cmd.Name())
		return exitUsage
	case errors.Is(err, errSilent):
		return exitError
	default:
		fmt.Fprintf(stderr, "error: %v\n", err)
		return exitError
	}
}

// newRootCommand builds the ebb command tree; each subcommand lives in its own file.
func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "ebb",
		Short:         "ebb: GitOps releases that are verified and rolled back when they fail",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// Flag errors are usage errors (exit 2), as in kubectl.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{msg: err.Error()} })
	root.AddCommand(
		newRunCommand(),
		newPipelinesCommand(),
		newExecutionsCommand(),
		newExecutionCommand(),
		newValidateCommand(),
		newPlanCommand(),
		newNewCommand(),
		newApproveCommand(),
		newRejectCommand(),
		newDashboardCommand(),
	)
	return root
}

// restConfig loads a kubeconfig file, or $KUBECONFIG and ~/.kube/config, or the in-cluster
// config, in kubectl's order.
func restConfig(kubeconfig string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	return cfg, nil
}
