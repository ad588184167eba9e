package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

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
		Use:   "new --from app.yaml --name NAME --dev-cluster X --prod-cluster Y [-o FILE]",
		Short: "Write a pipeline for an application from its Kubernetes YAML",
		Long: `Write a pipeline with a dev and a prod stage for the application in a Kubernetes YAML file
(a Namespace, a Service and its Deployment, optionally a docker-config Secret). The pipeline
deploys the directory of that file, releases the Deployment's image, and rolls a failed stage
back unless --rollback=false. When the file has several Services, --service picks one; on a
terminal ebb asks. The pipeline is checked and rendered before it is written, and is not
enabled: enable it once its plan looks right.`,
		Example: `  ebb new --from apps/hello/app.yaml --name hello --dev-cluster dev --prod-cluster prod \
    --model blue-green --health-url http://hello.hello-dev.svc/healthz -o pipelines/hello.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runNew(cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.from, "from", "", "Kubernetes YAML of the application, inside the repository")
	fl.StringVar(&f.name, "name", "", "name of the pipeline")
	fl.StringVar(&f.model, "model", string(planner.ModelRolling), "deployment model: rolling or blue-green")
	fl.StringVar(&f.devCluster, "dev-cluster", "", "cluster of the dev stage")
	fl.StringVar(&f.prodCluster, "prod-cluster", "", "cluster of the prod stage")
	fl.BoolVar(&f.rollback, "rollback", true, "roll a failed stage back to its last known-good release")
	fl.StringVar(&f.healthURL, "health-url", "", "URL each stage polls to verify a release; {namespace} is replaced by the stage's namespace")
	fl.StringVar(&f.service, "service", "", "the Service to deploy, when the YAML has several")
	fl.StringVar(&f.repo, "repo", ".", "root of the repository the pipeline is for")
	fl.StringVarP(&f.output, "output", "o", "", "file to write the pipeline to (default: standard output)")
	for _, name := range []string{"from", "name", "dev-cluster", "prod-cluster"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// app is what `ebb new` learns from the YAML.
type app struct {
	namespace   string
	services    []string
	deployments map[string]*unstructured.Unstructured
}

// runNew reads the application, picks its service, writes the pipeline and checks it.
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
	manifests, err := manifestsDir(f.repo, f.from)
	if err != nil {
		return err
	}
	a, err := readApp(f.from)
	if err != nil {
		return err
	}
	service, err := pickService(stdin, stderr, a, f.service)
	if err != nil {
		return err
	}
	data, err := pipelineYAML(f, a, service, manifests)
	if err != nil {
		return err
	}
	if err := checkNewPipeline(f.repo, data); err != nil {
		return fmt.Errorf("the pipeline ebb wrote does not validate (please report this): %w", err)
	}
	if f.output == "" {
		_, err = stdout.Write(data)
		return err
	}
	if err := os.WriteFile(f.output, data, 0o644); err != nil {
		return fmt.Errorf("write pipeline: %w", err)
	}
	fmt.Fprintf(stderr, "wrote pipeline %q to %s; it is not enabled yet: check `ebb plan`, then set spec.enabled\n", f.name, f.output)
	return nil
}

// manifestsDir returns the directory of the YAML file relative to the repository root.
func manifestsDir(repo, from string) (string, error) {
	absRepo, err := filepath.Abs(repo)
	if err != nil {
		return "", err
	}
	absFrom, err := filepath.Abs(from)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(absRepo, filepath.Dir(absFrom))
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", usageErrorf("--from %s is outside the repository %s (set --repo)", from, repo)
	}
	return filepath.ToSlash(rel), nil
}

// readApp decodes the YAML's objects and keeps what a pipeline needs.
func readApp(file string) (*app, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read application: %w", err)
	}
	a := &app{deployments: map[string]*unstructured.Unstructured{}}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("read application %s: %w", file, err)
		}
		if obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		switch u.GetKind() {
		case "Namespace":
			a.namespace = u.GetName()
		case "Service":
			a.services = append(a.services, u.GetName())
		case "Deployment":
			a.deployments[u.GetName()] = u
			if a.namespace == "" {
				a.namespace = u.GetNamespace()
			}
		}
	}
	if len(a.services) == 0 {
		return nil, fmt.Errorf("application %s has no Service: ebb deploys a Service and its Deployment", file)
	}
	return a, nil
}

// pickService returns the service to deploy: the flag's, the only one, or the user's choice
// on a terminal.
func pickService(stdin io.Reader, stderr io.Writer, a *app, flag string) (string, error) {
	switch {
	case flag != "":
		for _, s := range a.services {
			if s == flag {
				return s, checkDeployment(a, s)
			}
		}
		return "", usageErrorf("--service %q: the application's Services are %s", flag, strings.Join(a.services, ", "))
	case len(a.services) == 1:
		return a.services[0], checkDeployment(a, a.services[0])
	case !isTerminal(stdin):
		return "", usageErrorf("the application has several Services (%s): pick one with --service", strings.Join(a.services, ", "))
	}
	fmt.Fprintln(stderr, "The application has several Services. Which one does the pipeline deploy?")
	for i, s := range a.services {
		fmt.Fprintf(stderr, "  %d) %s\n", i+1, s)
	}
	fmt.Fprint(stderr, "Number: ")
	line, _ := bufio.NewReader(stdin).ReadString('\n')
	n, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || n < 1 || n > len(a.services) {
		return "", usageErrorf("no such choice %q", strings.TrimSpace(line))
	}
	return a.services[n-1], checkDeployment(a, a.services[n-1])
}

// checkDeployment requires the Deployment of the service's name, which the models act on.
func checkDeployment(a *app, service string) error {
	if _, ok := a.deployments[service]; !ok {
		return fmt.Errorf("service %q has no Deployment of the same name; ebb deploys a Service and the Deployment named like it", service)
	}
	return nil
}

func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
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

// pipelineYAML fills the template.
func pipelineYAML(f newFlags, a *app, service, manifests string) ([]byte, error) {
	image, tag := splitImage(firstImage(a.deployments[service]))
	if image == "" {
		return nil, fmt.Errorf("deployment %q has no container image", service)
	}
	ns := a.namespace
	if ns == "" {
		ns = service
	}
	var b bytes.Buffer
	err := pipelineTemplate.Execute(&b, map[string]any{
		"From": path.Join(manifests, filepath.Base(f.from)), "Name": f.name, "Image": image, "Tag": tag,
		"Manifests": manifests, "Service": service, "Model": f.model, "Rollback": f.rollback,
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

// checkNewPipeline parses the new pipeline and renders its stages against the repository.
func checkNewPipeline(repoDir string, data []byte) error {
	pipelines, err := planner.ParseFile("new pipeline", data, planner.DefaultOptions())
	if err != nil {
		return err
	}
	repo := planner.NewRepo(os.DirFS(repoDir))
	_, err = planner.NewRenderer(planner.DefaultOptions()).RenderAll(repo, pipelines)
	return err
}
