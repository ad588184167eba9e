package planner

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/ignore"
	"helm.sh/helm/v3/pkg/releaseutil"
	"sigs.k8s.io/kustomize/api/filters/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/api/types"

	"ebb.dev/ebb/planner/strictyaml"
)

// HelmSource renders a Helm chart of the repository, as `helm template` would, offline: the
// chart and its dependencies must all be in the repository (dependencies vendored under the
// chart's charts/), nothing is looked up in a cluster, and hooks are left out.
type HelmSource struct {
	// Chart is the chart's directory, relative to the repository root.
	Chart string `json:"chart"`
	// Values override the chart's values.yaml and ValuesFiles, as `helm --set` would.
	Values HelmValues `json:"values,omitempty"`
	// ValuesFiles are values files of the repository, merged in order over the chart's
	// values.yaml, as `helm -f` would.
	ValuesFiles []string `json:"valuesFiles,omitempty"`
}

// HelmValues are a chart's values written in a pipeline file: any YAML mapping.
type HelmValues map[string]any

// DecodeNode accepts a mapping with string keys, holding anything JSON can hold.
func (v *HelmValues) DecodeNode(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("expected a mapping of values, got %s", strictyaml.Describe(n))
	}
	val, err := nodeValue(n, 0)
	if err != nil {
		return fmt.Errorf("values must be plain YAML (string keys, no merge keys, timestamps or .inf): %v", err)
	}
	vals, err := jsonValues(val)
	if err != nil {
		return err
	}
	*v = vals
	return nil
}

// jsonValues converts values to the form Helm reads values files in (numbers as
// json.Number), so a value means the same inline as in a values file.
func jsonValues(v any) (HelmValues, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	vals, err := chartutil.ReadValues(data)
	if err != nil {
		return nil, err
	}
	return HelmValues(vals), nil
}

// helmKubeVersion is the Kubernetes version charts see in .Capabilities: fixed, the one of
// the Kubernetes libraries ebb is built with, so a render (and its hash) depends on the
// repository alone, as a kustomize render does, and `ebb validate` renders without a cluster.
const helmKubeVersion = "v1.37.0"

// helmCapabilities are the capabilities every chart is rendered with.
func helmCapabilities() *chartutil.Capabilities {
	caps := chartutil.DefaultCapabilities.Copy()
	kv, _ := chartutil.ParseKubeVersion(helmKubeVersion)
	caps.KubeVersion = *kv
	return caps
}

// helmValidate checks what can be checked of a stage's chart without rendering it: its
// directory and values files are in the repository and the directory holds a Chart.yaml.
func helmValidate(p *Pipeline, repo *Repo) strictyaml.ErrorList {
	var errs strictyaml.ErrorList
	for i := range p.Spec.Stages {
		h := p.HelmOf(&p.Spec.Stages[i])
		if h == nil || h.Chart == "" || checkRelativePath(h.Chart) != nil {
			continue // reported by validateSpec
		}
		at := "spec.helm"
		if p.Spec.Stages[i].Helm != nil {
			at = fmt.Sprintf("spec.stages[%d].helm", i)
		}
		real, err := repo.resolve(h.Chart)
		switch {
		case err != nil:
			errs = append(errs, p.errorAt(at+".chart", "chart path %q: %v", h.Chart, err))
			continue
		case !repo.isDir(real):
			errs = append(errs, p.errorAt(at+".chart", "chart path %q is not a directory of the repository", h.Chart))
			continue
		}
		if _, err := repo.lstat(path.Join(real, "Chart.yaml")); err != nil {
			errs = append(errs, p.errorAt(at+".chart", "chart path %q has no Chart.yaml", h.Chart))
		}
		for j, f := range h.ValuesFiles {
			if checkRelativePath(f) != nil {
				continue
			}
			if real, err := repo.resolve(f); err != nil || repo.isDir(real) {
				errs = append(errs, p.errorAt(fmt.Sprintf("%s.valuesFiles[%d]", at, j), "values file %q is not a file of the repository", f))
			} else if _, err := repo.lstat(real); err != nil {
				errs = append(errs, p.errorAt(fmt.Sprintf("%s.valuesFiles[%d]", at, j), "values file %q is not a file of the repository", f))
			}
		}
	}
	return errs
}

// helm checks a helm field of the spec or of a stage (parent), given the manifests set beside
// it.
func (v *validator) helm(parent, manifests string, h *HelmSource) {
	if h == nil {
		return
	}
	at := parent + ".helm"
	if manifests != "" {
		v.errorf(at, "%s sets both manifests and helm: render either a manifests directory or a Helm chart", parent)
	}
	if v.required(at, "chart", h.Chart) {
		if err := checkRelativePath(h.Chart); err != nil {
			v.errorf(at+".chart", "chart path %q %v", h.Chart, err)
		}
	}
	for i, f := range h.ValuesFiles {
		if err := checkRelativePath(f); err != nil {
			v.errorf(fmt.Sprintf("%s.valuesFiles[%d]", at, i), "values file %q %v", f, err)
		}
	}
}

// runHelm renders the stage's chart with the stage's values, then sets the stage's namespace
// and ebb's labels with kustomize, exactly as for a manifests directory, so what follows
// (image, ordering, hash, apply) is the same whatever the source. Its notes say what was left
// out: hooks.
func runHelm(fsys *renderFS, params renderParams) (resmap.ResMap, []string, error) {
	h := params.Helm
	ch, err := loadChart(fsys, h.Chart)
	if err != nil {
		return nil, nil, err
	}
	vals, err := helmValues(fsys, h)
	if err != nil {
		return nil, nil, err
	}
	manifests, notes, err := renderChart(ch, h.Chart, vals, params)
	if err != nil {
		return nil, nil, err
	}
	rendered, err := checkRendered(fsys, h.Chart, manifests)
	if err != nil {
		return nil, nil, err
	}
	m, err := namespaced(fsys, rendered, params)
	if err != nil {
		return nil, nil, err
	}
	return m, notes, nil
}

// loadChart reads a chart directory of the repository, .helmignore applied, through the
// render's filesystem: every file is noted as an input and counted against the limits, and
// nothing outside the repository can be reached (the filesystem holds nothing else).
func loadChart(fsys *renderFS, chartDir string) (*chart.Chart, error) {
	dir := path.Join(repoRoot, chartDir)
	if !fsys.IsDir(dir) {
		return nil, fmt.Errorf("helm chart %s: not a directory of the repository", chartDir)
	}
	rules := ignore.Empty()
	if data, err := fsys.ReadFile(path.Join(dir, ignore.HelmIgnore)); err == nil {
		if rules, err = ignore.Parse(bytes.NewReader(data)); err != nil {
			return nil, atFile(path.Join(chartDir, ignore.HelmIgnore), "%v", err)
		}
	}
	rules.AddDefaults()
	names, err := chartFileNames(fsys, dir, "", rules)
	if err != nil {
		return nil, fmt.Errorf("helm chart %s: %w", chartDir, cleanKustomizeError(err))
	}
	sort.Strings(names)
	files := make([]*loader.BufferedFile, 0, len(names))
	for _, name := range names {
		data, err := readChartFile(fsys, path.Join(dir, name))
		if err != nil {
			return nil, err
		}
		files = append(files, &loader.BufferedFile{Name: name, Data: bytes.TrimPrefix(data, []byte("\xEF\xBB\xBF"))})
	}
	ch, err := loader.LoadFiles(files)
	if err != nil {
		return nil, atFile(path.Join(chartDir, "Chart.yaml"), "load Helm chart: %v", err)
	}
	if err := checkDependencies(ch, fsys, chartDir); err != nil {
		return nil, err
	}
	return ch, nil
}

// chartFileNames lists the files of the chart directory dir below rel, .helmignore applied,
// one directory at a time: an ignored directory is not listed, so what is added to it is no
// input of the render.
func chartFileNames(fsys *renderFS, dir, rel string, rules *ignore.Rules) ([]string, error) {
	entries, err := fsys.ReadDir(path.Join(dir, rel))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		name := path.Join(rel, e)
		isDir := fsys.IsDir(path.Join(dir, name))
		if rules.Ignore(name, fileInfo{name: e, dir: isDir}) {
			continue
		}
		if !isDir {
			names = append(names, name)
			continue
		}
		sub, err := chartFileNames(fsys, dir, name, rules)
		if err != nil {
			return nil, err
		}
		names = append(names, sub...)
	}
	return names, nil
}

// fileInfo is what .helmignore rules look at: a name, and whether it is a directory.
type fileInfo struct {
	name string
	dir  bool
}

func (f fileInfo) Name() string { return f.name }
func (f fileInfo) Size() int64  { return 0 }
func (f fileInfo) Mode() fs.FileMode {
	if f.dir {
		return fs.ModeDir
	}
	return 0
}
func (f fileInfo) ModTime() time.Time { return time.Time{} }
func (f fileInfo) IsDir() bool        { return f.dir }
func (f fileInfo) Sys() any           { return nil }

// readChartFile reads a file of a chart. Templates are not YAML until rendered: they count
// against the limits of bytes, and what they render is checked against the others
// (checkRendered). Every other YAML file of the chart (values.yaml, Chart.yaml) is checked as
// a manifest is.
func readChartFile(fsys *renderFS, p string) ([]byte, error) {
	if !isTemplate(p) {
		return fsys.ReadFile(p)
	}
	if fsys.pastDeadline() {
		return nil, fsys.exceed(errPastDeadline)
	}
	if fsys.snapshot != nil {
		if size, ok := fsys.snapshot.oversized[cleanAbs(p)]; ok {
			return nil, fsys.exceed(fileTooBig(repoPath(p), size, fsys.limits.MaxFileBytes))
		}
	}
	fsys.looked++
	data, err := fsys.repo.ReadFile(p)
	fsys.note(opRead, p, digestBytes(data, err))
	if err != nil {
		return nil, err
	}
	if err := fsys.countBytes(repoPath(p), len(data)); err != nil {
		return nil, err
	}
	return data, nil
}

// isTemplate reports whether a chart file is a template (of the chart or a subchart).
func isTemplate(p string) bool {
	return strings.Contains(p, "/templates/")
}

// countBytes adds n bytes read or rendered to the render's total.
func (r *renderFS) countBytes(file string, n int) error {
	if r.read += int64(n); r.read > r.limits.MaxRenderBytes {
		return r.exceed(atFile(file, "reading it makes the render read %s, over the limit of %s per render (limits.maxRenderBytes)",
			byteSize(r.read), byteSize(r.limits.MaxRenderBytes)))
	}
	return nil
}

// checkDependencies makes a dependency of Chart.yaml that is not vendored under charts/ an
// error located at it: ebb downloads nothing.
func checkDependencies(ch *chart.Chart, fsys *renderFS, chartDir string) error {
	have := map[string]bool{}
	for _, d := range ch.Dependencies() {
		have[d.Name()] = true
	}
	for _, d := range ch.Metadata.Dependencies {
		if have[d.Name] {
			continue
		}
		file := path.Join(chartDir, "Chart.yaml")
		data, _ := fsys.peek(path.Join(repoRoot, file))
		line := lineOf(data, regexp.MustCompile(`(?m)^\s*-?\s*name:\s*["']?`+regexp.QuoteMeta(d.Name)+`["']?\s*$`))
		return &strictyaml.Error{File: file, Pos: strictyaml.Pos{Line: line, Col: 1}, Msg: fmt.Sprintf(
			"dependency %q (version %s, repository %s) is not vendored under %s/charts/: ebb downloads no dependency; run `helm dependency build %s` and commit the charts/ directory",
			d.Name, d.Version, d.Repository, chartDir, chartDir)}
	}
	for _, d := range ch.Dependencies() {
		if err := checkDependencies(d, fsys, path.Join(chartDir, "charts", d.Name())); err != nil {
			return err
		}
	}
	return nil
}

// lineOf returns the line of the first match of re in data, or 1.
func lineOf(data []byte, re *regexp.Regexp) int {
	if loc := re.FindIndex(data); loc != nil {
		return bytes.Count(data[:loc[0]], []byte("\n")) + 1
	}
	return 1
}

// helmValues merges the stage's values files, in order, and its inline values over them, as
// `helm -f a.yaml -f b.yaml --set …` would; the chart's own values.yaml is under them all.
func helmValues(fsys *renderFS, h *HelmSource) (map[string]any, error) {
	vals := map[string]any{}
	for _, f := range h.ValuesFiles {
		data, err := fsys.ReadFile(path.Join(repoRoot, f))
		if err != nil {
			if fsys.exceeded != nil {
				return nil, fsys.exceeded
			}
			return nil, fmt.Errorf("values file %s: not a file of the repository", f)
		}
		fileVals, err := parseValuesFile(f, data)
		if err != nil {
			return nil, err
		}
		vals = mergeValues(vals, fileVals)
	}
	return mergeValues(vals, h.Values), nil
}

// parseValuesFile reads a values file as Helm does, with a parse error located in it.
func parseValuesFile(file string, data []byte) (map[string]any, error) {
	if _, err := strictyaml.ParseDocuments(file, data); err != nil {
		return nil, firstError(err)
	}
	vals, err := chartutil.ReadValues(data)
	if err != nil {
		return nil, atFile(file, "values file: %s", oneLine(err.Error()))
	}
	return vals, nil
}

// mergeValues merges src over dst, maps deeply, as Helm merges values files; dst is not
// changed.
func mergeValues(dst, src map[string]any) map[string]any {
	out := make(map[string]any, len(dst)+len(src))
	for k, v := range dst {
		out[k] = v
	}
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := out[k].(map[string]any); ok {
				out[k] = mergeValues(dm, sm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// renderChart renders the templates of a chart as a first install of release params.Pipeline
// in the stage's namespace would, with no cluster to look up (`lookup` returns nothing) and
// fixed capabilities. It returns the manifests that are not hooks, CRDs of crds/ first, and a
// note per hook left out.
func renderChart(ch *chart.Chart, chartDir string, vals map[string]any, params renderParams) ([]releaseutil.Manifest, []string, error) {
	caps := helmCapabilities()
	if kv := ch.Metadata.KubeVersion; kv != "" && !chartutil.IsCompatibleRange(kv, caps.KubeVersion.String()) {
		return nil, nil, atFile(path.Join(chartDir, "Chart.yaml"), "the chart needs Kubernetes %s; ebb renders charts for Kubernetes %s", kv, caps.KubeVersion.String())
	}
	if err := chartutil.ProcessDependenciesWithMerge(ch, vals); err != nil {
		return nil, nil, fmt.Errorf("helm chart %s: dependencies: %w", chartDir, err)
	}
	options := chartutil.ReleaseOptions{Name: params.Pipeline, Namespace: params.Namespace, Revision: 1, IsInstall: true}
	// Helm's own schema check would follow a schema's $refs to any http(s) or file URL, out
	// of the repository: checkSchemas does it offline.
	top, err := chartutil.ToRenderValuesWithSchemaValidation(ch, vals, options, caps, true)
	if err != nil {
		return nil, nil, fmt.Errorf("helm chart %s: values: %w", chartDir, err)
	}
	if v, ok := top["Values"].(chartutil.Values); ok {
		if err := checkSchemas(ch, chartDir, map[string]any(v)); err != nil {
			return nil, nil, err
		}
	}
	files, err := engine.Engine{}.Render(ch, top)
	if err != nil {
		return nil, nil, locateTemplateError(chartDir, err)
	}
	for name := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			delete(files, name)
		}
	}
	if err := checkYAML(chartDir, files); err != nil {
		return nil, nil, err
	}
	hooks, manifests, err := releaseutil.SortManifests(files, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return nil, nil, locateTemplateError(chartDir, err)
	}
	var notes []string
	for _, h := range hooks {
		events := make([]string, len(h.Events))
		for i, e := range h.Events {
			events[i] = string(e)
		}
		notes = append(notes, fmt.Sprintf("Helm hook %s/%s (%s, %s) is left out: ebb runs no hooks",
			h.Kind, h.Name, strings.Join(events, ","), chartFile(chartDir, h.Path)))
	}
	var crds []releaseutil.Manifest
	for _, crd := range ch.CRDObjects() {
		crds = append(crds, releaseutil.Manifest{Name: crd.Filename, Content: string(crd.File.Data)})
	}
	return append(crds, manifests...), notes, nil
}

// checkYAML locates a template that renders invalid YAML at the line of what it rendered
// (the template's own line when no directive above it spans lines). Helm would say only
// which file.
func checkYAML(chartDir string, files map[string]string) error {
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if strings.HasPrefix(path.Base(name), "_") || strings.TrimSpace(files[name]) == "" {
			continue // partials render nothing of their own
		}
		file := chartFile(chartDir, name)
		if _, err := strictyaml.ParseDocuments(file, []byte(files[name])); err != nil {
			at := firstError(err)
			if e, ok := at.(*strictyaml.Error); ok {
				return &strictyaml.Error{File: e.File, Pos: e.Pos, Msg: "the template renders invalid YAML: " + e.Msg}
			}
			return at
		}
	}
	return nil
}

// firstError returns the first error of a strictyaml.ErrorList, or err.
func firstError(err error) error {
	var list strictyaml.ErrorList
	if errors.As(err, &list) && len(list) > 0 {
		return list[0]
	}
	return err
}

// templateLocRE finds "chart/templates/file.yaml:12" or "…:12:5" in Helm's messages.
var templateLocRE = regexp.MustCompile(`([A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+):(\d+)(?::(\d+))?`)

// yamlLocRE finds Helm's "YAML parse error on chart/templates/file.yaml".
var yamlLocRE = regexp.MustCompile(`(?:parse error on|error in) \(?([A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+)`)

// locateTemplateError places a template's error at its file and line in the chart.
func locateTemplateError(chartDir string, err error) error {
	msg := oneLine(err.Error())
	if m := templateLocRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[2])
		col, _ := strconv.Atoi(m[3])
		return &strictyaml.Error{File: chartFile(chartDir, m[1]), Pos: strictyaml.Pos{Line: line, Col: max(col, 1)}, Msg: "helm template: " + msg}
	}
	if m := yamlLocRE.FindStringSubmatch(msg); m != nil {
		return atFile(chartFile(chartDir, m[1]), "helm template: %s", msg)
	}
	return fmt.Errorf("helm chart %s: %s", chartDir, msg)
}

// chartFile turns Helm's name of a chart file ("podinfo/templates/x.yaml", the chart's name
// first) into its repository path.
func chartFile(chartDir, name string) string {
	_, rest, ok := strings.Cut(name, "/")
	if !ok {
		return path.Join(chartDir, name)
	}
	return path.Join(chartDir, rest)
}

// checkRendered keeps what the templates rendered within the render's limits, as the
// manifests of a directory are (bytes, documents, aliases, depth, keys), and returns it as one
// YAML stream. Each manifest is located at its template.
func checkRendered(fsys *renderFS, chartDir string, manifests []releaseutil.Manifest) ([]byte, error) {
	var b bytes.Buffer
	l := fsys.limits.manifestLimits()
	for _, m := range manifests {
		if fsys.pastDeadline() {
			return nil, fsys.exceed(errPastDeadline)
		}
		file := chartFile(chartDir, m.Name)
		if err := fsys.countBytes(file, len(m.Content)); err != nil {
			return nil, err
		}
		docs, err := strictyaml.Check(file, []byte(m.Content), l)
		var le *strictyaml.LimitError
		if errors.As(err, &le) {
			return nil, fsys.exceed(&strictyaml.Error{File: file, Pos: le.At.Pos,
				Msg: fmt.Sprintf("as rendered: %s (%s)", le.At.Msg, setting[le.Limit])})
		}
		if fsys.docs += docs; fsys.docs > fsys.limits.MaxDocuments {
			return nil, fsys.exceed(atFile(file, "rendering it makes the render hold %d YAML documents, more than %d (limits.maxDocuments)", fsys.docs, fsys.limits.MaxDocuments))
		}
		b.WriteString("---\n")
		b.WriteString(m.Content)
		b.WriteString("\n")
	}
	if b.Len() == 0 {
		return nil, fmt.Errorf("helm chart %s renders no objects", chartDir)
	}
	return b.Bytes(), nil
}

// namespaced sets the stage's namespace and ebb's labels on the rendered objects with
// kustomize, from a kustomization in the render's scratch directory, as for a plain YAML
// directory.
func namespaced(fsys *renderFS, rendered []byte, params renderParams) (resmap.ResMap, error) {
	dir := path.Join(scratchRoot, params.Pipeline, params.Stage)
	if err := fsys.MkdirAll(dir); err != nil {
		return nil, err
	}
	if err := fsys.WriteFile(path.Join(dir, "chart.yaml"), rendered); err != nil {
		return nil, err
	}
	kustomization := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: %q\nresources:\n- chart.yaml\n", params.Namespace)
	if err := fsys.WriteFile(path.Join(dir, "kustomization.yaml"), []byte(kustomization)); err != nil {
		return nil, err
	}
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("helm chart %s: the rendered objects: %w", params.Helm.Chart, cleanKustomizeError(err))
	}
	if err := m.ApplyFilter(labels.Filter{
		Labels:  map[string]string{LabelPipeline: params.Pipeline, LabelStage: params.Stage},
		FsSlice: types.FsSlice{{Path: "metadata/labels", CreateIfNotPresent: true}},
	}); err != nil {
		return nil, fmt.Errorf("label objects: %w", err)
	}
	return m, nil
}
