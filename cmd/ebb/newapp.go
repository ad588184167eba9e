package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"ebb.dev/ebb/planner"
)

// app is what `ebb new` learns from the rendered manifests.
type app struct {
	// namespace is the manifests' own Namespace object, or "" when they have none or several.
	namespace string
	// targets are the Services that select a Deployment, in name order.
	targets []target
	// unselected are the Services that select no Deployment, for messages.
	unselected []string
}

// target is a Service and the Deployments whose pod template labels its selector matches.
type target struct {
	service     string
	deployments []*unstructured.Unstructured
}

// deployment returns the Deployment the Service deploys: the only one it selects, or the
// one named like it.
func (t target) deployment() (*unstructured.Unstructured, error) {
	if len(t.deployments) == 1 {
		return t.deployments[0], nil
	}
	names := make([]string, len(t.deployments))
	for i, d := range t.deployments {
		if d.GetName() == t.service {
			return d, nil
		}
		names[i] = d.GetName()
	}
	return nil, fmt.Errorf("service %q selects several Deployments (%s) and none is named like it; give each its own labels", t.service, strings.Join(names, ", "))
}

// discoveryPipeline and discoveryStage name the in-memory pipeline `ebb new` renders the
// manifests with. The stage has no namespace, so the objects keep their own.
const (
	discoveryPipeline = "ebb-new"
	discoveryStage    = "new"
)

// readApp renders the manifests directory as the planner renders a stage, and pairs each
// Service with the Deployments it selects.
func readApp(repo *planner.Repo, manifests string) (*app, error) {
	rel, err := renderManifests(repo, manifests)
	if err != nil {
		return nil, err
	}
	return appOf(rel.Objects.Decode()), nil
}

// renderManifests renders the manifests with the planner. The planner needs the name of a
// Deployment to render (it injects the image into it) and matches it also when a namePrefix
// or nameSuffix changed it; any Deployment of the render will do, so ebb tries "" (the only
// Deployment, if there is one) and, when there are several, the Deployment names written in
// the repository's YAML, those in the manifests directory first, longest first (the least
// likely to be ambiguous once prefixed).
func renderManifests(repo *planner.Repo, manifests string) (*planner.Release, error) {
	r := planner.NewRenderer(planner.DefaultOptions())
	renderStage := func(service string) (*planner.Release, error) {
		return r.Render(repo, &planner.Pipeline{
			Metadata: planner.Metadata{Name: discoveryPipeline},
			Spec: planner.PipelineSpec{
				Manifests: manifests, Service: service,
				Stages: []planner.Stage{{Name: discoveryStage, Model: planner.ModelRolling}},
			},
		}, discoveryStage)
	}
	// The planner's error names the in-memory pipeline and stage, which mean nothing here.
	render := func(service string) (*planner.Release, error) {
		rel, err := renderStage(service)
		if cause := errors.Unwrap(err); cause != nil {
			err = cause
		}
		return rel, err
	}
	// "" is the only Deployment, if there is one. The planner's error tells the cases apart:
	// the manifests do not build, they have no Deployment, or they have several.
	rel, err := render("")
	switch {
	case err == nil:
		return rel, nil
	case !strings.HasPrefix(err.Error(), `service "":`):
		return nil, fmt.Errorf("render manifests %s: %w", manifests, err)
	case strings.Contains(err.Error(), "have no Deployment"):
		return nil, fmt.Errorf("manifests %s have no Deployment: ebb deploys a Service and its Deployment", manifests)
	}
	for _, name := range deploymentNames(repo.FS(), manifests) {
		if rel, err = render(name); err == nil {
			return rel, nil
		}
	}
	return nil, fmt.Errorf("render manifests %s: %w", manifests, err)
}

// maxDeploymentNames bounds the renders renderManifests tries.
const maxDeploymentNames = 20

// deploymentNames returns the names of the Deployments written in YAML files of the
// manifests directory and then of the rest of the repository (a kustomization may use a
// base elsewhere), without repeats, each group longest first, at most maxDeploymentNames.
// Files that do not decode are skipped: the render reports them.
func deploymentNames(fsys fs.FS, manifests string) []string {
	var names []string
	seen := map[string]bool{}
	collect := func(root string, skip string) {
		var group []string
		_ = fs.WalkDir(fsys, root, func(p string, d fs.DirEntry, err error) error {
			switch {
			case err != nil:
				return nil
			case d.IsDir() && (p == skip || p != "." && strings.HasPrefix(d.Name(), ".")):
				return fs.SkipDir
			case d.IsDir() || !isYAMLFile(p):
				return nil
			}
			data, err := fs.ReadFile(fsys, p)
			if err != nil {
				return nil
			}
			for _, u := range decodeObjects(data) {
				if u.GetKind() == "Deployment" && u.GetName() != "" && !seen[u.GetName()] {
					seen[u.GetName()] = true
					group = append(group, u.GetName())
				}
			}
			return nil
		})
		slices.SortStableFunc(group, func(a, b string) int { return len(b) - len(a) })
		names = append(names, group...)
	}
	collect(manifests, "")
	if manifests != "." {
		collect(".", manifests)
	}
	return names[:min(len(names), maxDeploymentNames)]
}

func isYAMLFile(p string) bool {
	ext := path.Ext(p)
	return ext == ".yaml" || ext == ".yml" || ext == ".json"
}

// decodeObjects returns the objects of a YAML or JSON stream, as far as it decodes.
func decodeObjects(data []byte) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			return out // io.EOF, or the rest does not decode
		}
		if obj != nil {
			out = append(out, &unstructured.Unstructured{Object: obj})
		}
	}
}

// appOf pairs each Service with the Deployments in its namespace whose pod template labels
// its selector matches, as Kubernetes routes traffic; the names need not match.
func appOf(objects []*unstructured.Unstructured) *app {
	a := &app{}
	var namespaces []string
	var deployments []*unstructured.Unstructured
	for _, o := range objects {
		switch o.GetKind() {
		case "Namespace":
			namespaces = append(namespaces, o.GetName())
		case "Deployment":
			deployments = append(deployments, o)
		}
	}
	if len(namespaces) == 1 {
		a.namespace = namespaces[0]
	}
	for _, svc := range objects {
		if svc.GetKind() != "Service" {
			continue
		}
		t := target{service: svc.GetName()}
		selector, _, _ := unstructured.NestedStringMap(svc.Object, "spec", "selector")
		for _, d := range deployments {
			podLabels, _, _ := unstructured.NestedStringMap(d.Object, "spec", "template", "metadata", "labels")
			if len(selector) > 0 && d.GetNamespace() == svc.GetNamespace() &&
				labels.SelectorFromSet(selector).Matches(labels.Set(podLabels)) {
				t.deployments = append(t.deployments, d)
			}
		}
		if len(t.deployments) == 0 {
			a.unselected = append(a.unselected, t.service)
			continue
		}
		a.targets = append(a.targets, t)
	}
	return a
}

// serviceNames lists the targets' Services.
func (a *app) serviceNames() []string {
	names := make([]string, len(a.targets))
	for i, t := range a.targets {
		names[i] = t.service
	}
	return names
}
