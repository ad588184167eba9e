package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
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
	if err != nil && strings.HasPrefix(err.Error(), "unknown command ") {
		// cobra finds the command before any hook runs, and does not type this error.
		err = &usageError{msg: err.Error()}
	}
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
	// So are a missing required flag and a flag group broken: checked here, before cobra checks
	// them with untyped errors.
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if err := cmd.ValidateRequiredFlags(); err != nil {
			return &usageError{msg: err.Error()}
		}
		if err := cmd.ValidateFlagGroups(); err != nil {
			return &usageError{msg: err.Error()}
		}
		return nil
	}
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
		newReconcileCommand(),
		newVersionCommand(),
	)
	usageArgs(root)
	completeModels(root)
	return root
}

// usageArgs makes a wrong number or kind of arguments a usage error (exit 2) on every command.
func usageArgs(c *cobra.Command) {
	if check := c.Args; check != nil {
		c.Args = func(cmd *cobra.Command, args []string) error {
			if err := check(cmd, args); err != nil {
				return &usageError{msg: err.Error()}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		usageArgs(sub)
	}
}
