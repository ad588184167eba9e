package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"

	"ebb.dev/ebb/planner"
)

// newFlags are the flags of `ebb new`.
type newFlags struct {
	from, name, model       string
	devCluster, prodCluster string
	rollback                bool
	healthURL               string
	service                 string
	repo                    string
	output                  string
}

func newNewCommand() *cobra.Command {
	f := newFlags{}
	cmd := &cobra.Command{
		Use:   "new --from DIR|FILE --name NAME --dev-cluster X --prod-cluster Y [-o FILE]",
		Short: "Write a pipeline for an application from its Kubernetes YAML",
		Long: `Write a pipeline with a dev and a prod stage for the application in a directory of the
repository: a kustomization, or plain Kubernetes YAML files (a file stands for its directory).
ebb renders the directory as the pipeline will, pairs each Service with the Deployment whose
pod labels its selector matches, and releases that Deployment's image. When there are several
Services, --service picks one; on a terminal ebb asks, otherwise it is an error that lists
them. The stages deploy to the manifests' Namespace (or one named like the pipeline), with
-dev for dev, and roll a failed stage back unless --rollback=false. The pipeline is checked
and rendered before it is written, and is not enabled: enable it once its plan looks right.
` + "`-o`" + ` creates the file's directory.`,
		Example: `  ebb new --from apps/hello/app.yaml --name hello --dev-cluster dev --prod-cluster prod \
    --model blue-green --health-url http://hello.hello-dev.svc/healthz -o pipelines/hello.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runNew(cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.from, "from", "", "the application's manifests inside the repository: a kustomization, a directory of YAML, or a file of it")
	fl.StringVar(&f.name, "name", "", "name of the pipeline")
	fl.StringVar(&f.model, "model", string(planner.ModelRolling), "deployment model: rolling or blue-green")
	fl.StringVar(&f.devCluster, "dev-cluster", "", "cluster of the dev stage")
	fl.StringVar(&f.prodCluster, "prod-cluster", "", "cluster of the prod stage")
	fl.BoolVar(&f.rollback, "rollback", true, "roll a failed stage back to its last known-good release")
	fl.StringVar(&f.healthURL, "health-url", "", "URL each stage polls to verify a release; {namespace} is replaced by the stage's namespace")
	fl.StringVar(&f.service, "service", "", "the Service to deploy (its rendered name), when there are several")
	fl.StringVar(&f.repo, "repo", ".", "root of the repository the pipeline is for")
	fl.StringVarP(&f.output, "output", "o", "", "file to write the pipeline to (default: standard output)")
	for _, name := range []string{"from", "name", "dev-cluster", "prod-cluster"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// runNew renders the application, picks its Service, writes the pipeline and checks it.
func runNew(stdin io.Reader, stdout, stderr io.Writer, f newFlags) error {
	if f.model != string(planner.ModelRolling) && f.model != string(planner.ModelBlueGreen) {
		return usageErrorf("--model %q: want %s or %s", f.model, planner.ModelRolling, planner.ModelBlueGreen)
	}
	if f.devCluster == "" || f.prodCluster == "" {
		return usageErrorf("--dev-cluster and --prod-cluster name the clusters of the two stages")
	}
	if errs := validation.IsDNS1123Label(f.name); len(errs) > 0 {
		return usageErrorf("--name %q: a pipeline name is a DNS label: lowercase letters, digits and '-'", f.name)
	}
	src, err := sourceOf(f.repo, f.from)
	if err != nil {
		return err
	}
	repo := planner.NewRepo(os.DirFS(f.repo))
	a, err := readApp(repo, src.manifests)
	if err != nil {
		return err
	}
	if len(a.targets) == 0 {
		return noTargetError(src.manifests, a)
	}
	t, err := pickService(stdin, stderr, a, f.service, isTerminal(stdin))
	if err != nil {
		return err
	}
	data, err := writePipeline(repo, f, src, a, t)
	if err != nil {
		return err
	}
	return output(stdout, stderr, f, data)
}

// source is where --from points, relative to the repository root.
type source struct {
	// from is the file or directory as the pipeline's comment names it.
	from string
	// manifests is the directory the pipeline deploys: --from itself, or the file's directory.
	manifests string
}

// sourceOf resolves --from inside the repository. A file stands for its directory, which is
// what a pipeline deploys.
func sourceOf(repo, from string) (source, error) {
	fi, err := os.Stat(from)
	if err != nil {
		return source{}, fmt.Errorf("read application: %w", err)
	}
	absRepo, err := filepath.Abs(repo)
	if err != nil {
		return source{}, err
	}
	absFrom, err := filepath.Abs(from)
	if err != nil {
		return source{}, err
	}
	rel, err := filepath.Rel(absRepo, absFrom)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return source{}, usageErrorf("--from %s is outside the repository %s (set --repo)", from, repo)
	}
	s := source{from: filepath.ToSlash(rel), manifests: filepath.ToSlash(rel)}
	if !fi.IsDir() {
		s.manifests = path.Dir(s.from)
	}
	return s, nil
}

// noTargetError says why the manifests have nothing to deploy.
func noTargetError(manifests string, a *app) error {
	if len(a.unselected) == 0 {
		return fmt.Errorf("manifests %s have no Service: ebb deploys a Service and the Deployment it selects", manifests)
	}
	return fmt.Errorf("manifests %s: no Service selects a Deployment (Services: %s); ebb deploys a Service and the Deployment it selects",
		manifests, strings.Join(a.unselected, ", "))
}

// pickService returns the Service to deploy: the flag's, the only one, or the user's choice
// when ebb may ask (standard input is a terminal).
func pickService(stdin io.Reader, stderr io.Writer, a *app, flag string, interactive bool) (target, error) {
	choices := strings.Join(a.serviceNames(), ", ")
	switch {
	case flag != "":
		for _, t := range a.targets {
			if t.service == flag {
				return t, nil
			}
		}
		if slices.Contains(a.unselected, flag) {
			return target{}, usageErrorf("--service %q selects no Deployment; the Services that do are %s", flag, choices)
		}
		return target{}, usageErrorf("--service %q: the application's Services are %s", flag, choices)
	case len(a.targets) == 1:
		return a.targets[0], nil
	case !interactive:
		return target{}, usageErrorf("the application has several Services (%s): pick one with --service", choices)
	}
	fmt.Fprintln(stderr, "The application has several Services. Which one does the pipeline deploy?")
	for i, t := range a.targets {
		fmt.Fprintf(stderr, "  %d) %s\n", i+1, t.service)
	}
	fmt.Fprint(stderr, "Number: ")
	line, _ := bufio.NewReader(stdin).ReadString('\n')
	n, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || n < 1 || n > len(a.targets) {
		return target{}, usageErrorf("no such choice %q", strings.TrimSpace(line))
	}
	return a.targets[n-1], nil
}

// writePipeline returns the pipeline for the target, checked by rendering it as the planner
// will. Its service is the Deployment's rendered name, or else the Service's: the planner
// finds the Deployment and the Service by that one name (allowing a name prefix or suffix),
// and the render must find exactly the pair the Service's selector made.
func writePipeline(repo *planner.Repo, f newFlags, src source, a *app, t target) ([]byte, error) {
	deploy, err := t.deployment()
	if err != nil {
		return nil, err
	}
	image, tag := splitImage(firstImage(deploy))
	if image == "" {
		return nil, fmt.Errorf("deployment %q has no container image", deploy.GetName())
	}
	names := []string{deploy.GetName()}
	if t.service != deploy.GetName() {
		names = append(names, t.service)
	}
	for i, service := range names {
		data, err := pipelineYAML(f, src, a.namespace, service, image, tag)
		if err != nil {
			return nil, err
		}
		rel, err := checkNewPipeline(repo, data)
		switch {
		case err != nil && i == 0:
			return nil, fmt.Errorf("the pipeline ebb wrote does not validate (please report this): %w", err)
		case err == nil && rel.Deployment == deploy.GetName() && rel.Service == t.service:
			return data, nil
		}
	}
	return nil, fmt.Errorf("service %q selects Deployment %q, but a pipeline's service names both, so one name must contain the other: rename one",
		t.service, deploy.GetName())
}

// output writes the pipeline to standard output or to -o, creating the file's directory.
func output(stdout, stderr io.Writer, f newFlags, data []byte) error {
	if f.output == "" {
		_, err := stdout.Write(data)
		return err
	}
	if err := os.MkdirAll(filepath.Dir(f.output), 0o755); err != nil {
		return fmt.Errorf("write pipeline: %w", err)
	}
	if err := os.WriteFile(f.output, data, 0o644); err != nil {
		return fmt.Errorf("write pipeline: %w", err)
	}
	fmt.Fprintf(stderr, "wrote pipeline %q to %s; it is not enabled yet: check `ebb plan`, then set spec.enabled\n", f.name, f.output)
	return nil
}

// isTerminal reports whether ebb may ask on r: a terminal, not merely a character device
// (</dev/null is one, and is never prompted).
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// pipelineTemplate is the pipeline `ebb new` writes, in the order docs/pipelines.md uses.
var pipelineTemplate = template.Must(template.New("pipeline").Parse(`# Written by ebb new from {{.From}}. Enable it once ` + "`ebb plan`" + ` looks right.
apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata:
  name: {{.Name}}
spec:
  enabled: false
  input:
    image: {{.Image}}
    tag: {{printf "%q" .Tag}}
  manifests: {{.Manifests}}
  service: {{.Service}}
  stages:
{{- range .Stages}}
  - name: {{.Name}}
    cluster: {{.Cluster}}
    namespace: {{.Namespace}}
    model: {{$.Model}}
    verify:
      rollout: {timeout: 5m}
{{- if .HealthURL}}
      healthCheck: {url: {{printf "%q" .HealthURL}}, interval: 5s, successes: 3, failures: 3, timeout: 2m}
{{- end}}
    rollback: {{$.Rollback}}
{{- end}}
`))

type templateStage struct{ Name, Cluster, Namespace, HealthURL string }

// pipelineYAML fills the template. The stages' namespaces are the manifests' Namespace
// object's name, or else the pipeline's, with -dev for the dev stage.
func pipelineYAML(f newFlags, src source, namespace, service, image, tag string) ([]byte, error) {
	ns := namespace
	if ns == "" {
		ns = f.name
	}
	var b bytes.Buffer
	err := pipelineTemplate.Execute(&b, map[string]any{
		"From": src.from, "Name": f.name, "Image": image, "Tag": tag,
		"Manifests": src.manifests, "Service": service, "Model": f.model, "Rollback": f.rollback,
		"Stages": []templateStage{
			{Name: "dev", Cluster: f.devCluster, Namespace: ns + "-dev", HealthURL: strings.ReplaceAll(f.healthURL, "{namespace}", ns+"-dev")},
			{Name: "prod", Cluster: f.prodCluster, Namespace: ns, HealthURL: strings.ReplaceAll(f.healthURL, "{namespace}", ns)},
		},
	})
	return b.Bytes(), err
}

func firstImage(d *unstructured.Unstructured) string {
	containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	for _, c := range containers {
		if m, ok := c.(map[string]any); ok {
			if img, ok := m["image"].(string); ok {
				return img
			}
		}
	}
	return ""
}

// splitImage splits a reference into name and tag (or digest); no tag means "latest".
func splitImage(ref string) (string, string) {
	if name, digest, ok := strings.Cut(ref, "@"); ok {
		return name, digest
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i], ref[i+1:]
	}
	return ref, "latest"
}

// checkNewPipeline parses the new pipeline, renders its stages against the repository and
// returns the first stage's release.
func checkNewPipeline(repo *planner.Repo, data []byte) (*planner.Release, error) {
	pipelines, err := planner.ParseFile("new pipeline", data, planner.DefaultOptions())
	if err != nil {
		return nil, err
	}
	releases, err := planner.NewRenderer(planner.DefaultOptions()).RenderAll(repo, pipelines)
	if err != nil {
		return nil, err
	}
	return releases[0], nil
}
