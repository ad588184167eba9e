package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"ebb.dev/ebb/planner"
	"ebb.dev/ebb/planner/strictyaml"
)

// validateFlags are the flags of `ebb validate`.
type validateFlags struct {
	configFile string
	output     string
}

func newValidateCommand() *cobra.Command {
	f := validateFlags{}
	cmd := &cobra.Command{
		Use:   "validate [DIR...]",
		Short: "Check every pipeline of a repository and render each stage",
		Long: `Parse every pipeline file under each repository DIR (default: the current directory)
strictly, check it
against the repository and, with --config, against the daemon's clusters, and render every
stage with kustomize. Every error of every file is printed as file:line:col: message.

Exit status: 0 all pipelines are valid; 1 some are not, or the check could not run; 2 bad usage.`,
		Example: `  ebb validate examples/rolling-upgrade examples/blue-green
  ebb validate --config /etc/ebb/config.yaml .`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				args = []string{"."}
			}
			return runValidate(cmd.OutOrStdout(), cmd.ErrOrStderr(), args, f)
		},
	}
	cmd.Flags().StringVar(&f.configFile, "config", "", "daemon config file: stages may only name its clusters")
	cmd.Flags().StringVarP(&f.output, "output", "o", "", "output format: yaml or json")
	return cmd
}

// validateResult is the result `ebb validate -o yaml|json` prints.
type validateResult struct {
	Pipelines []validatedPipeline `json:"pipelines"`
	Errors    []string            `json:"errors"`
}

type validatedPipeline struct {
	Name    string           `json:"name"`
	File    string           `json:"file"`
	Enabled bool             `json:"enabled"`
	Stages  []validatedStage `json:"stages"`
}

type validatedStage struct {
	Name      string `json:"name"`
	Cluster   string `json:"cluster"`
	Namespace string `json:"namespace"`
	Hash      string `json:"hash,omitempty"`
	Objects   int    `json:"objects"`
}

func runValidate(stdout, stderr io.Writer, dirs []string, f validateFlags) error {
	if err := checkFormat(f.output, "yaml", "json"); err != nil {
		return err
	}
	opts, _, err := plannerOptions(f.configFile)
	if err != nil {
		return err
	}
	all := validateResult{Pipelines: []validatedPipeline{}, Errors: []string{}}
	for _, dir := range dirs {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return fmt.Errorf("validate %s: not a directory", dir)
		}
		result, errs, err := validateRepo(planner.NewRepo(os.DirFS(dir)), opts)
		if err != nil {
			return fmt.Errorf("validate %s: %w", dir, err)
		}
		for i := range result.Pipelines {
			result.Pipelines[i].File = filepath.Join(dir, result.Pipelines[i].File)
		}
		all.Pipelines = append(all.Pipelines, result.Pipelines...)
		for _, e := range errs {
			e.File = filepath.Join(dir, e.File)
			all.Errors = append(all.Errors, e.Error())
			fmt.Fprintln(stderr, e)
		}
	}
	if err := printValidation(stdout, f.output, all); err != nil {
		return err
	}
	if len(all.Errors) > 0 {
		return errSilent
	}
	return nil
}

// validateRepo loads and renders every pipeline of a repository. It returns the summary and
// the located errors; err is set only when the check itself could not run.
func validateRepo(repo *planner.Repo, opts planner.Options) (validateResult, strictyaml.ErrorList, error) {
	var errs strictyaml.ErrorList
	pipelines, err := planner.Load(repo, opts)
	if !collect(&errs, err) {
		return validateResult{}, nil, err
	}
	releases, err := planner.NewRenderer(opts).RenderAll(repo, pipelines)
	if !collect(&errs, err) {
		return validateResult{}, nil, err
	}
	rendered := map[string]*planner.Release{}
	for _, r := range releases {
		rendered[r.Pipeline+"/"+r.Stage] = r
	}
	result := validateResult{Pipelines: []validatedPipeline{}, Errors: []string{}}
	for _, p := range pipelines {
		vp := validatedPipeline{Name: p.Metadata.Name, File: p.File, Enabled: p.Spec.Enabled}
		for _, s := range p.Spec.Stages {
			vs := validatedStage{Name: s.Name, Cluster: s.Cluster, Namespace: s.Namespace}
			if r := rendered[p.Metadata.Name+"/"+s.Name]; r != nil {
				vs.Hash, vs.Objects = r.Hash, r.Objects.Len()
			}
			vp.Stages = append(vp.Stages, vs)
		}
		result.Pipelines = append(result.Pipelines, vp)
	}
	errs.Sort()
	return result, errs, nil
}

// collect adds located errors to errs and reports whether err was nil or located.
func collect(errs *strictyaml.ErrorList, err error) bool {
	if err == nil {
		return true
	}
	var list strictyaml.ErrorList
	if errors.As(err, &list) {
		*errs = append(*errs, list...)
		return true
	}
	return false
}

func printValidation(w io.Writer, format string, v validateResult) error {
	if format != "" {
		return printStructured(w, format, v)
	}
	stages := 0
	for _, p := range v.Pipelines {
		stages += len(p.Stages)
	}
	if len(v.Errors) == 0 {
		_, err := fmt.Fprintf(w, "%d pipelines valid, %d stages rendered\n", len(v.Pipelines), stages)
		return err
	}
	_, err := fmt.Fprintf(w, "%d errors; %d pipelines valid\n", len(v.Errors), countValid(v))
	return err
}

// countValid counts the pipelines all of whose stages rendered.
func countValid(v validateResult) int {
	n := 0
	for _, p := range v.Pipelines {
		ok := true
		for _, s := range p.Stages {
			ok = ok && s.Hash != ""
		}
		if ok {
			n++
		}
	}
	return n
}
