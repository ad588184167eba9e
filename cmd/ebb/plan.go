package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/internal/ssa"
	"ebb.dev/ebb/planner"
	"ebb.dev/ebb/planner/strictyaml"
	"ebb.dev/ebb/reconciler"
)

// exitChanges is `ebb plan`'s exit status when applying would change something, so CI can
// tell "in sync" (0) from "would change" (3) from "failed" (1) and "bad usage" (2).
const exitChanges = 3

// planFlags are the flags of `ebb plan`.
type planFlags struct {
	repoFlags
	pipeline, stage, namespace string
	configFile                 string
	// kube are kubectl's connection flags (--kubeconfig, --context, --as, ...) without -n,
	// which selects stages here.
	kube    *genericclioptions.ConfigFlags
	records string
	output  string
}

func newPlanCommand() *cobra.Command {
	f := planFlags{}
	cmd := &cobra.Command{
		Use:   "plan --repo DIR|URL [--pipeline NAME] [--stage NAME] [--kubeconfig FILE]",
		Short: "Show what applying each stage's release would change in its cluster",
		Long: `Render each stage's release and diff it against its live cluster by server-side apply
dry-run (field manager "ebb"). Each object is reported as created, configured (with a diff),
unchanged, or to be pruned. Secret values are masked. Nothing is written to any cluster.

"To be pruned" is exactly what the daemon would delete once the release is verified: the
objects of the stage's inventory (in its StageLedger, read from --records-namespace of the
--kubeconfig cluster) that the release no longer has, except those annotated
ebb.dev/prune: disabled. When the ledgers cannot be read, nothing is shown as pruned and a
warning says why.

A stage's cluster is the daemon config's cluster of that name (--config), or else the
kubeconfig context of that name, or else --context, or else the current context.

Exit status: 0 nothing would change; 3 something would change; 1 a pipeline is invalid or a
cluster could not be read; 2 bad usage.`,
		Example: `  ebb plan --repo examples/rolling-upgrade --stage dev
  ebb plan --repo https://git.example.com/team/deploy.git --branch main --pipeline web -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPlan(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.repo, "repo", "", "repository: a local directory or a Git URL")
	fl.StringVar(&f.branch, "branch", "main", "branch of a Git URL")
	fl.StringVar(&f.tag, "tag", "", "tag of a Git URL, instead of a branch")
	fl.StringVar(&f.path, "path", "", "directory inside the repository that holds the pipelines and manifests")
	fl.StringVar(&f.pipeline, "pipeline", "", "only this pipeline")
	fl.StringVar(&f.stage, "stage", "", "only this stage")
	fl.StringVarP(&f.namespace, "namespace", "n", "", "only stages that deploy into this namespace")
	fl.StringVar(&f.configFile, "config", "", "daemon config file naming the clusters")
	f.kube = genericclioptions.NewConfigFlags(false)
	f.kube.Namespace, f.kube.CacheDir = nil, nil // -n selects stages; no discovery
	f.kube.AddFlags(fl)
	fl.Lookup("context").Usage = "kubeconfig context for stages whose cluster has no context of its name, and of the records"
	fl.StringVar(&f.records, "records-namespace", "ebb-system", "namespace of ebb's records (stage ledgers) in the --kubeconfig cluster: their inventories say what would be pruned")
	fl.StringVarP(&f.output, "output", "o", "", "output format: yaml or json")
	_ = cmd.MarkFlagRequired("repo")
	return cmd
}

// stageRef is one stage selected for planning.
type stageRef struct {
	pipeline *planner.Pipeline
	stage    *planner.Stage
}

// runPlan loads, selects, renders and diffs, then prints; a failing stage does not stop the
// others.
func runPlan(ctx context.Context, stdout, stderr io.Writer, f planFlags) error {
	if err := checkFormat(f.output, "yaml", "json"); err != nil {
		return err
	}
	opts, cfg, err := plannerOptions(f.configFile)
	if err != nil {
		return err
	}
	fsys, _, closeRepo, err := openRepo(ctx, f.repoFlags)
	if err != nil {
		return err
	}
	defer closeRepo()
	repo := planner.NewRepo(fsys)

	var errs strictyaml.ErrorList
	pipelines, err := planner.Load(repo, opts)
	if !collect(&errs, err) {
		return err
	}
	selected, err := selectStages(pipelines, f)
	if err != nil {
		printErrors(stderr, errs)
		return err
	}
	if f.pipeline != "" && len(selected) > 0 {
		// Plan that pipeline, whatever is wrong with the others.
		errs = errorsOf(errs, selected[0].pipeline.File)
	}
	renderer := planner.NewRenderer(opts)
	clusters := &clusterDiffers{flags: f, config: cfg, differs: map[string]*planner.Differ{}}
	ledgers := newLedgerReader(ctx, stderr, f)
	var plans []*planner.Plan
	failures := len(errs)
	printErrors(stderr, errs)
	for _, s := range selected {
		plan, err := planStage(ctx, repo, renderer, clusters, ledgers, s)
		if err != nil {
			fmt.Fprintln(stderr, "error:", err)
			failures++
			continue
		}
		plans = append(plans, plan)
	}
	if err := printPlans(stdout, f.output, plans, selected); err != nil {
		return err
	}
	return planStatus(plans, failures)
}

// planStage renders one stage and diffs it against its cluster.
func planStage(ctx context.Context, repo *planner.Repo, r *planner.Renderer, clusters *clusterDiffers, ledgers *ledgerReader, s stageRef) (*planner.Plan, error) {
	rel, err := r.Render(repo, s.pipeline, s.stage.Name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.pipeline.File, err)
	}
	d, err := clusters.differ(ctx, s.stage.Cluster)
	if err != nil {
		return nil, fmt.Errorf("plan stage %q of pipeline %q: %w", s.stage.Name, s.pipeline.Metadata.Name, err)
	}
	// Diff what the stage's model applies: a blue-green stage runs the release as a color.
	applied := *rel
	objs, err := reconciler.AppliedObjects(s.stage, rel)
	if err == nil {
		applied.Objects, err = planner.ObjectsOf(objs)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: stage %q: %w", s.pipeline.File, s.stage.Name, err)
	}
	return d.Diff(ctx, &applied, ledgers.inventory(ctx, s.pipeline.Metadata.Name, s.stage.Name))
}

// errorsOf keeps the errors of one file.
func errorsOf(errs strictyaml.ErrorList, file string) strictyaml.ErrorList {
	var out strictyaml.ErrorList
	for _, e := range errs {
		if e.File == file {
			out = append(out, e)
		}
	}
	return out
}

// ledgerReader reads stage inventories from the records of the --kubeconfig cluster. When
// they cannot be read it warns once and plans no pruning.
type ledgerReader struct {
	store  *reconciler.Store
	stderr io.Writer
	warned bool
}

func newLedgerReader(ctx context.Context, stderr io.Writer, f planFlags) *ledgerReader {
	l := &ledgerReader{stderr: stderr}
	cfg, err := f.contextConfig("")
	if err == nil {
		var dyn dynamic.Interface
		if dyn, err = dynamic.NewForConfig(cfg); err == nil {
			l.store = reconciler.NewStore(dyn, f.records)
		}
	}
	if err != nil {
		l.warn(err)
	}
	return l
}

func (l *ledgerReader) inventory(ctx context.Context, pipeline, stage string) ssa.Inventory {
	if l.store == nil {
		return nil
	}
	ledger, err := l.store.Ledger(ctx, pipeline, stage)
	if err != nil {
		l.warn(err)
		return nil
	}
	return ledger.Status.Inventory
}

func (l *ledgerReader) warn(err error) {
	if !l.warned {
		fmt.Fprintf(l.stderr, "warning: pruning is not shown: cannot read the stage ledgers: %v\n", err)
		l.warned = true
	}
}

// planStatus turns the outcome into the exit status.
func planStatus(plans []*planner.Plan, failures int) error {
	if failures > 0 {
		return errSilent
	}
	for _, p := range plans {
		if p.Changed() {
			return &exitCode{code: exitChanges}
		}
	}
	return nil
}

// selectStages picks the stages the flags name, in pipeline and stage order.
func selectStages(pipelines []*planner.Pipeline, f planFlags) ([]stageRef, error) {
	var out []stageRef
	foundPipeline := f.pipeline == ""
	for _, p := range pipelines {
		if f.pipeline != "" && p.Metadata.Name != f.pipeline {
			continue
		}
		foundPipeline = true
		for i := range p.Spec.Stages {
			s := &p.Spec.Stages[i]
			if (f.stage == "" || s.Name == f.stage) && (f.namespace == "" || s.Namespace == f.namespace) {
				out = append(out, stageRef{pipeline: p, stage: s})
			}
		}
	}
	switch {
	case !foundPipeline:
		return nil, fmt.Errorf("no valid pipeline %q in the repository", f.pipeline)
	case len(out) == 0 && (f.stage != "" || f.namespace != ""):
		return nil, fmt.Errorf("no stage matches --stage %q --namespace %q", f.stage, f.namespace)
	}
	return out, nil
}

// clusterDiffers makes one Differ per cluster name, on first use.
type clusterDiffers struct {
	flags   planFlags
	config  *config.Config
	differs map[string]*planner.Differ
}

func (c *clusterDiffers) differ(ctx context.Context, name string) (*planner.Differ, error) {
	if d, ok := c.differs[name]; ok {
		return d, nil
	}
	cfg, err := c.restConfig(ctx, name)
	if err != nil {
		return nil, err
	}
	d, err := planner.NewDiffer(cfg, planner.DefaultDiffOptions())
	if err != nil {
		return nil, err
	}
	c.differs[name] = d
	return d, nil
}

// restConfig finds the cluster: the daemon config's, else the kubeconfig context of that
// name, else --context or the current context.
func (c *clusterDiffers) restConfig(ctx context.Context, name string) (*rest.Config, error) {
	if c.config != nil {
		if cl := c.config.Cluster(name); cl != nil {
			return c.fromConfig(ctx, cl)
		}
	}
	context := ""
	if *c.flags.kube.Context == "" && hasContext(*c.flags.kube.KubeConfig, name) {
		context = name
	}
	cfg, err := c.flags.contextConfig(context)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", name, err)
	}
	return cfg, nil
}

// fromConfig connects as the daemon would; a kubeconfig Secret is read through --kubeconfig.
func (c *clusterDiffers) fromConfig(ctx context.Context, cl *config.Cluster) (*rest.Config, error) {
	var home kubernetes.Interface
	if cl.KubeconfigSecret != nil {
		cfg, err := c.flags.contextConfig("")
		if err != nil {
			return nil, err
		}
		if home, err = kubernetes.NewForConfig(cfg); err != nil {
			return nil, err
		}
	}
	return cl.RESTConfig(ctx, home)
}

// contextConfig is the client config of the connection flags (or $KUBECONFIG,
// ~/.kube/config, in-cluster), with context instead of --context when not "".
func (f planFlags) contextConfig(context string) (*rest.Config, error) {
	if context != "" {
		saved := *f.kube.Context
		*f.kube.Context = context
		defer func() { *f.kube.Context = saved }()
	}
	cfg, err := f.kube.ToRESTConfig() // a new loader each call: the flags are not persistent
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	return cfg, nil
}

// hasContext reports whether the kubeconfig has a context of that name.
func hasContext(kubeconfig, name string) bool {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	raw, err := rules.Load()
	if err != nil {
		return false
	}
	_, ok := raw.Contexts[name]
	return ok
}

func printErrors(w io.Writer, errs strictyaml.ErrorList) {
	for _, e := range errs {
		fmt.Fprintln(w, e)
	}
}

// printPlans writes the plans as text, kubectl style, or as YAML or JSON.
func printPlans(w io.Writer, format string, plans []*planner.Plan, selected []stageRef) error {
	if format != "" {
		if plans == nil {
			plans = []*planner.Plan{}
		}
		return printStructured(w, format, plans)
	}
	enabled := map[string]bool{}
	for _, s := range selected {
		enabled[s.pipeline.Metadata.Name] = s.pipeline.Spec.Enabled
	}
	var b strings.Builder
	for _, p := range plans {
		state := "enabled"
		if !enabled[p.Pipeline] {
			state = "not enabled: plan only"
		}
		fmt.Fprintf(&b, "pipeline %s, stage %s (cluster %s, namespace %s, release %s, %s)\n",
			p.Pipeline, p.Stage, p.Cluster, p.Namespace, shortHash(p.Hash), state)
		for _, n := range p.Notes {
			fmt.Fprintf(&b, "  note: %s\n", n)
		}
		for _, c := range p.Changes {
			fmt.Fprintf(&b, "  %s %s\n", c.Object, c.Action)
			for _, line := range strings.Split(strings.TrimRight(c.Diff, "\n"), "\n") {
				if line != "" {
					fmt.Fprintf(&b, "      %s\n", line)
				}
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func shortHash(h string) string {
	if len(h) > len("sha256:")+12 {
		return h[:len("sha256:")+12]
	}
	return h
}

// exitCode ends a command with a status other than 0, 1 and 2, having printed its output.
type exitCode struct{ code int }

func (e *exitCode) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// exitCodeOf returns the status an error asks for, if it is an *exitCode.
func exitCodeOf(err error) (int, bool) {
	var e *exitCode
	if errors.As(err, &e) {
		return e.code, true
	}
	return 0, false
}
