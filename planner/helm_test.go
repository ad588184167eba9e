package planner

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"ebb.dev/ebb/planner/strictyaml"
)

const podinfoChartRepo = "testdata/podinfo-chart"

// containerEnv returns the env of the first container of a Deployment, by name.
func containerEnv(t *testing.T, deploy *unstructured.Unstructured) map[string]string {
	t.Helper()
	containers, _, err := unstructured.NestedSlice(deploy.Object, "spec", "template", "spec", "containers")
	require.NoError(t, err)
	require.NotEmpty(t, containers)
	env := map[string]string{}
	list, _ := containers[0].(map[string]any)["env"].([]any)
	for _, e := range list {
		m := e.(map[string]any)
		if v, ok := m["value"].(string); ok {
			env[m["name"].(string)] = v
		}
	}
	return env
}

func TestHelmRenderPodinfo(t *testing.T) {
	repo, p := loadOne(t, podinfoChartRepo, "podinfo")
	r := NewRenderer(testClusters)

	dev, err := r.Render(repo, p, "dev")
	require.NoError(t, err)
	assert.Equal(t, []string{"Service/podinfo-dev/podinfo", "Deployment/podinfo-dev/podinfo"}, kinds(dev.Objects.Decode()),
		"the chart's defaults: no service account, HPA, PDB, Redis or Ingress; hooks and test pods left out")
	assert.Equal(t, "podinfo", dev.Deployment, "release name = pipeline name, so podinfo.fullname is podinfo")
	assert.Equal(t, "podinfo", dev.Service)
	assert.Equal(t, []string{"ghcr.io/stefanprodan/podinfo:6.14.0"}, dev.Images, "input.tag replaces the chart's 6.14.1")
	for _, o := range dev.Objects.Decode() {
		assert.Equal(t, "podinfo-dev", o.GetNamespace(), RefOf(o).String())
		assert.Equal(t, "podinfo", o.GetLabels()[LabelPipeline])
		assert.Equal(t, "dev", o.GetLabels()[LabelStage])
		assert.Equal(t, "Helm", o.GetLabels()["app.kubernetes.io/managed-by"], "the chart's own labels are kept")
	}
	deploy := findObject(dev.Objects.Decode(), "Deployment", "podinfo")
	replicas, _, _ := unstructured.NestedInt64(deploy.Object, "spec", "replicas")
	assert.Equal(t, int64(2), replicas, "inline values.replicaCount")
	env := containerEnv(t, deploy)
	assert.Equal(t, "from the pipeline", env["PODINFO_UI_MESSAGE"], "inline values win over values files")
	assert.Equal(t, "#2f855a", env["PODINFO_UI_COLOR"], "values/dev.yaml wins over the chart's values.yaml")
	args := strings.Join(stringSlice(t, deploy, "command"), " ")
	assert.Contains(t, args, "--level=debug", "values/dev.yaml's logLevel")
	require.NotEmpty(t, dev.Notes)
	assert.Contains(t, strings.Join(dev.Notes, "\n"), "Helm hook Pod/podinfo-grpc-test-")
	for _, n := range dev.Notes {
		assert.Contains(t, n, "ebb runs no hooks")
		assert.Contains(t, n, "charts/podinfo/templates/tests/", "each note names its template")
	}

	prod, err := r.Render(repo, p, "prod")
	require.NoError(t, err)
	assert.Equal(t, []string{"ConfigMap/podinfo/podinfo-redis", "Service/podinfo/podinfo", "Service/podinfo/podinfo-redis",
		"Deployment/podinfo/podinfo", "Deployment/podinfo/podinfo-redis", "HorizontalPodAutoscaler/podinfo/podinfo"}, kinds(prod.Objects.Decode()),
		"values-prod.yaml turns Redis and the HPA on")
	assert.Equal(t, "podinfo", prod.Deployment)
	assert.NotEqual(t, dev.Hash, prod.Hash)

	again, err := r.Render(repo, p, "dev")
	require.NoError(t, err)
	assert.Same(t, dev, again, "unchanged inputs: the cached release")
	assert.Equal(t, 1, r.Stats().Reused)
}

func stringSlice(t *testing.T, deploy *unstructured.Unstructured, field string) []string {
	t.Helper()
	containers, _, _ := unstructured.NestedSlice(deploy.Object, "spec", "template", "spec", "containers")
	list, _ := containers[0].(map[string]any)[field].([]any)
	out := make([]string, len(list))
	for i, v := range list {
		out[i] = v.(string)
	}
	return out
}

// TestHelmRenderCacheSeesChartFiles: a release is rendered again when a file the chart read
// changes (a template, a values file), and reused when a file it did not read changes.
func TestHelmRenderCacheSeesChartFiles(t *testing.T) {
	dir := stageRepo(t, podinfoChartRepo)
	r := NewRenderer(testClusters)
	render := func() *Release {
		repo, p := loadOne(t, dir, "podinfo")
		rel, err := r.Render(repo, p, "dev")
		require.NoError(t, err)
		return rel
	}
	first := render()
	writeTree(t, dir, map[string]string{"README.md": "not read by any render\n"})
	assert.Same(t, first, render())

	editFile(t, dir, "values/dev.yaml", "logLevel: debug", "logLevel: warn")
	second := render()
	assert.NotEqual(t, first.Hash, second.Hash)

	editFile(t, dir, "charts/podinfo/templates/service.yaml", "kind: Service", "kind: Service\n# edited")
	third := render()
	assert.NotSame(t, second, third, "a template changed: rendered again")
	assert.Equal(t, second.Hash, third.Hash, "a comment changes no object")
	assert.Equal(t, 3, r.Stats().Rendered)
}

// chartRepo writes a repository with the pipeline "web" rendering the chart in chart/ from
// the given files, and a Deployment template unless files has its own.
func chartRepo(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	all := map[string]string{
		"pipelines/web.yaml": `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  input: {image: nginx, tag: "1.28"}
  service: web
  helm: {chart: chart}
  stages:
  - name: dev
    cluster: dev
    namespace: web-dev
`,
		"chart/Chart.yaml":                "apiVersion: v2\nname: web\nversion: 0.1.0\n",
		"chart/values.yaml":               "replicas: 1\n",
		"chart/templates/deployment.yaml": strings.Replace(deploymentYAML, "spec:\n", "spec:\n  replicas: {{ .Values.replicas }}\n", 1),
	}
	for k, v := range files {
		all[k] = v
	}
	writeTree(t, root, all)
	return root
}

// renderWeb loads and renders the dev stage of chartRepo's pipeline.
func renderWeb(t *testing.T, dir string, opts Options) (*Release, error) {
	t.Helper()
	repo := NewRepo(os.DirFS(dir))
	pipelines, err := Load(repo, opts)
	if err != nil {
		return nil, err
	}
	return NewRenderer(opts).Render(repo, pipelines[0], "dev")
}

// locatedErr returns the located error of a render or load.
func locatedErr(t *testing.T, err error) *strictyaml.Error {
	t.Helper()
	require.Error(t, err)
	var list strictyaml.ErrorList
	if errors.As(err, &list) {
		require.Len(t, list, 1, err.Error())
		return list[0]
	}
	var at *strictyaml.Error
	require.True(t, errors.As(err, &at), "not located: %v", err)
	return at
}

func TestHelmChartErrors(t *testing.T) {
	outside := t.TempDir()
	writeTree(t, outside, map[string]string{"Chart.yaml": "apiVersion: v2\nname: x\nversion: 0.1.0\n"})
	tests := []struct {
		name  string
		files map[string]string
		link  [2]string // a symlink to make: name, target
		file  string
		line  int
		msg   string
	}{
		{name: "chart path leaves the repository",
			files: map[string]string{"pipelines/web.yaml": `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  service: web
  helm: {chart: ../chart}
  stages: [{name: dev, cluster: dev, namespace: web-dev}]
`},
			file: "pipelines/web.yaml", line: 6, msg: `chart path "../chart" leaves the repository`},
		{name: "chart is a symlink out of the repository",
			files: map[string]string{"pipelines/web.yaml": `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  service: web
  helm: {chart: linked}
  stages: [{name: dev, cluster: dev, namespace: web-dev}]
`},
			link: [2]string{"linked", outside},
			file: "pipelines/web.yaml", line: 6, msg: "leads outside the repository"},
		{name: "manifests and helm in one stage",
			files: map[string]string{"pipelines/web.yaml": `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  service: web
  stages:
  - name: dev
    cluster: dev
    namespace: web-dev
    manifests: app
    helm: {chart: chart}
`},
			file: "pipelines/web.yaml", line: 11, msg: "sets both manifests and helm"},
		{name: "values file leaves the repository",
			files: map[string]string{"pipelines/web.yaml": `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  service: web
  helm: {chart: chart, valuesFiles: [/etc/passwd]}
  stages: [{name: dev, cluster: dev, namespace: web-dev}]
`},
			file: "pipelines/web.yaml", line: 6, msg: `values file "/etc/passwd" is absolute`},
		{name: "dependency not vendored",
			files: map[string]string{"chart/Chart.yaml": `apiVersion: v2
name: web
version: 0.1.0
dependencies:
- name: postgresql
  version: 16.0.0
  repository: https://charts.bitnami.com/bitnami
`},
			file: "chart/Chart.yaml", line: 5, msg: `dependency "postgresql" (version 16.0.0, repository https://charts.bitnami.com/bitnami) is not vendored under chart/charts/`},
		{name: "template parse error",
			files: map[string]string{"chart/templates/service.yaml": "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Values.name | nosuchfunc }}\n"},
			file:  "chart/templates/service.yaml", line: 4, msg: `function "nosuchfunc" not defined`},
		{name: "template execution error",
			files: map[string]string{"chart/templates/service.yaml": "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n  labels:\n    team: {{ required \"values.team is required\" .Values.team }}\n"},
			file:  "chart/templates/service.yaml", line: 6, msg: "values.team is required"},
		{name: "template renders invalid YAML",
			files: map[string]string{"chart/templates/service.yaml": "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n   bad: indent\n"},
			file:  "chart/templates/service.yaml", line: 5, msg: "the template renders invalid YAML"},
		{name: "values file with a syntax error",
			files: map[string]string{
				"pipelines/web.yaml": `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  service: web
  helm: {chart: chart, valuesFiles: [dev.yaml]}
  stages: [{name: dev, cluster: dev, namespace: web-dev}]
`,
				"dev.yaml": "replicas: 2\n  bad: [\n"},
			file: "dev.yaml", line: 2},
		{name: "kubeVersion not met",
			files: map[string]string{"chart/Chart.yaml": "apiVersion: v2\nname: web\nversion: 0.1.0\nkubeVersion: '<1.20.0'\n"},
			file:  "chart/Chart.yaml", line: 1, msg: "the chart needs Kubernetes <1.20.0; ebb renders charts for Kubernetes v1.37.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := chartRepo(t, tt.files)
			if tt.link[0] != "" {
				require.NoError(t, os.Symlink(tt.link[1], filepath.Join(dir, tt.link[0])))
			}
			_, err := renderWeb(t, dir, testClusters)
			if _, ok := err.(strictyaml.ErrorList); !ok {
				// A render error: RenderAll locates it as the daemon and the CLI show it.
				repo := NewRepo(os.DirFS(dir))
				pipelines, lerr := Load(repo, testClusters)
				require.NoError(t, lerr)
				_, err = NewRenderer(testClusters).RenderAll(repo, pipelines)
			}
			at := locatedErr(t, err)
			assert.Equal(t, tt.file, at.File, err.Error())
			assert.Equal(t, tt.line, at.Pos.Line, err.Error())
			assert.Contains(t, at.Msg, tt.msg)
			assert.NotContains(t, err.Error(), "\n")
		})
	}
}

func TestHelmVendoredDependency(t *testing.T) {
	dir := chartRepo(t, map[string]string{
		"chart/Chart.yaml": `apiVersion: v2
name: web
version: 0.1.0
dependencies:
- name: cache
  version: 1.0.0
  repository: https://example.com/charts
  condition: cache.enabled
`,
		"chart/values.yaml":                      "replicas: 1\ncache: {enabled: true, size: 64}\n",
		"chart/charts/cache/Chart.yaml":          "apiVersion: v2\nname: cache\nversion: 1.0.0\n",
		"chart/charts/cache/values.yaml":         "size: 16\n",
		"chart/charts/cache/templates/cm.yaml":   "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cache\ndata:\n  size: {{ .Values.size | quote }}\n  ns: {{ .Release.Namespace }}\n",
		"chart/.helmignore":                      "ignored/\n",
		"chart/ignored/templates/broken.yaml":    "{{ nosuchfunc }}",
		"chart/templates/NOTES.txt":              "Installed {{ .Release.Name }}\n",
		"chart/templates/_helpers.tpl":           "{{- define \"web.x\" -}}x{{- end -}}\n",
		"chart/templates/job-hook.yaml":          "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\n  annotations:\n    helm.sh/hook: pre-install,pre-upgrade\nspec: {}\n",
		"chart/templates/lookup.yaml":            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: lookup\ndata:\n  found: {{ (lookup \"v1\" \"Namespace\" \"\" \"kube-system\") | len | quote }}\n",
		"chart/templates/capabilities-note.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: caps\ndata:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n",
	})
	rel, err := renderWeb(t, dir, testClusters)
	require.NoError(t, err)
	assert.Equal(t, []string{"ConfigMap/web-dev/caps", "ConfigMap/web-dev/lookup", "ConfigMap/web-dev/web-cache", "Deployment/web-dev/web"}, kinds(rel.Objects.Decode()))
	cm := findObject(rel.Objects.Decode(), "ConfigMap", "web-cache")
	assert.Equal(t, map[string]any{"size": "64", "ns": "web-dev"}, cm.Object["data"], "the parent's values override the subchart's")
	assert.Equal(t, map[string]any{"found": "0"}, findObject(rel.Objects.Decode(), "ConfigMap", "lookup").Object["data"], "lookup finds nothing: no cluster is asked")
	assert.Equal(t, map[string]any{"kube": helmKubeVersion}, findObject(rel.Objects.Decode(), "ConfigMap", "caps").Object["data"])
	assert.Equal(t, []string{"Helm hook Job/migrate (pre-install,pre-upgrade, chart/templates/job-hook.yaml) is left out: ebb runs no hooks"}, rel.Notes)
	assert.Equal(t, []string{"nginx:1.28"}, rel.Images)

	r := NewRenderer(testClusters)
	render := func() *Release {
		repo := NewRepo(os.DirFS(dir))
		pipelines, err := Load(repo, testClusters)
		require.NoError(t, err)
		rel, err := r.Render(repo, pipelines[0], "dev")
		require.NoError(t, err)
		return rel
	}
	first := render()
	assert.Same(t, first, render(), "a chart with an ignored directory is reused from the cache")
	writeTree(t, dir, map[string]string{"chart/ignored/more.yaml": "{{ nosuchfunc }}"})
	assert.Same(t, first, render(), "a file added to an ignored directory changes nothing")
	assert.Equal(t, 1, r.Stats().Rendered)

	writeTree(t, dir, map[string]string{"chart/values.yaml": "replicas: 1\ncache: {enabled: false}\n"})
	rel, err = renderWeb(t, dir, testClusters)
	require.NoError(t, err)
	assert.Nil(t, findObject(rel.Objects.Decode(), "ConfigMap", "web-cache"), "the dependency's condition turns it off")
}

func TestHelmLimits(t *testing.T) {
	bigValues := "replicas: 1\nblob: " + strings.Repeat("x", 4096) + "\n"
	manyDocs := "{{- range until 50 }}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{{ . }}\n{{- end }}\n"
	tests := []struct {
		name   string
		files  map[string]string
		limits Limits
		file   string
		msg    string
	}{
		{"bytes read", map[string]string{"chart/values.yaml": bigValues}, Limits{MaxRenderBytes: 2048},
			"chart/values.yaml", "limits.maxRenderBytes"},
		{"bytes rendered", map[string]string{"chart/templates/big.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\ndata:\n  x: {{ repeat 5000 \"x\" | quote }}\n"},
			Limits{MaxRenderBytes: 4096}, "chart/templates/big.yaml", "limits.maxRenderBytes"},
		{"documents rendered", map[string]string{"chart/templates/many.yaml": manyDocs}, Limits{MaxDocuments: 20},
			"chart/templates/many.yaml", "limits.maxDocuments"},
		{"aliases in values.yaml", map[string]string{"chart/values.yaml": "replicas: 1\n" + aliasBombYAML()}, Limits{},
			"chart/values.yaml", "limits.maxYAMLAliases"},
		{"file too big", map[string]string{"chart/templates/huge.yaml": "# " + strings.Repeat("x", 8192) + "\n"}, Limits{MaxFileBytes: 4096},
			"chart/templates/huge.yaml", "limits.maxFileBytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := chartRepo(t, tt.files)
			opts := Options{Clusters: testClusters.Clusters, Limits: tt.limits}
			repo := NewRepo(os.DirFS(dir))
			pipelines, err := Load(repo, opts)
			require.NoError(t, err)
			_, err = NewRenderer(opts).RenderAll(repo, pipelines)
			at := locatedErr(t, err)
			assert.Equal(t, tt.file, at.File, err.Error())
			assert.Contains(t, at.Msg, tt.msg)
		})
	}
}

func TestHelmValuesDecode(t *testing.T) {
	p := parseOne(t, `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  service: web
  helm:
    chart: chart
    values:
      replicaCount: 2
      ratio: 0.5
      on: true
      nested: &n {a: [1, "two", null]}
      again: *n
  stages: [{name: dev, cluster: dev, namespace: web-dev}]
`)
	v := p.Spec.Helm.Values
	assert.Equal(t, float64(2), v["replicaCount"], "numbers as Helm reads values files")
	assert.Equal(t, true, v["on"])
	assert.Equal(t, v["nested"], v["again"])

	_, err := ParseFile("inline.yaml", []byte(`apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  service: web
  helm:
    chart: chart
    values: [1, 2]
  stages: [{name: dev, cluster: dev, namespace: web-dev}]
`), testClusters)
	at := locatedErr(t, err)
	assert.Equal(t, 8, at.Pos.Line)
	assert.Contains(t, at.Msg, "expected a mapping of values")
}

func TestMergeValues(t *testing.T) {
	dst := map[string]any{"a": map[string]any{"x": 1, "y": 2}, "b": 1}
	got := mergeValues(dst, map[string]any{"a": map[string]any{"y": 3}, "b": map[string]any{"z": 1}})
	assert.Equal(t, map[string]any{"a": map[string]any{"x": 1, "y": 3}, "b": map[string]any{"z": 1}}, got)
	assert.Equal(t, map[string]any{"a": map[string]any{"x": 1, "y": 2}, "b": 1}, dst, "dst unchanged")
}

// TestHelmSymlinksOutOfRepoInvisible: a chart cannot read outside the repository through a
// symlink, neither as a template nor through .Files; a symlink inside it is followed.
func TestHelmSymlinksOutOfRepoInvisible(t *testing.T) {
	outside := t.TempDir()
	writeTree(t, outside, map[string]string{
		"secret.txt": "host secret\n",
		"leak.yaml":  "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: leaked\n",
	})
	dir := chartRepo(t, map[string]string{
		"shared/inside.txt":       "from the repository\n",
		"chart/templates/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: files\ndata:\n  outside: {{ .Files.Get \"files/secret.txt\" | quote }}\n  inside: {{ .Files.Get \"files/inside.txt\" | trim | quote }}\n",
	})
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "chart/files"), 0o700))
	require.NoError(t, os.Symlink(filepath.Join(outside, "secret.txt"), filepath.Join(dir, "chart/files/secret.txt")))
	require.NoError(t, os.Symlink("../../shared/inside.txt", filepath.Join(dir, "chart/files/inside.txt")))
	require.NoError(t, os.Symlink(filepath.Join(outside, "leak.yaml"), filepath.Join(dir, "chart/templates/leak.yaml")))

	rel, err := renderWeb(t, dir, testClusters)
	require.NoError(t, err)
	assert.Equal(t, []string{"ConfigMap/web-dev/files", "Deployment/web-dev/web"}, kinds(rel.Objects.Decode()), "the template linked from outside is not there")
	assert.Equal(t, map[string]any{"outside": "", "inside": "from the repository"}, findObject(rel.Objects.Decode(), "ConfigMap", "files").Object["data"])
}

func TestHelmValuesSchema(t *testing.T) {
	schema := `{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
 "properties": {"replicas": {"type": "integer", "minimum": 1}}, "required": ["replicas"]}`
	tests := []struct {
		name, schema, values, msg string
	}{
		{"values match", schema, "replicas: 2\n", ""},
		{"values do not match", schema, "replicas: 0\n", "the values do not match the chart's schema"},
		{"a $ref to another document is not fetched", `{"$ref": "https://example.com/values.schema.json"}`, "replicas: 1\n", "ebb fetches no schema"},
		{"a $ref to a file of the host is not read", `{"$ref": "file:///etc/passwd"}`, "replicas: 1\n", "ebb fetches no schema"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := chartRepo(t, map[string]string{"chart/values.schema.json": tt.schema, "chart/values.yaml": tt.values})
			repo := NewRepo(os.DirFS(dir))
			pipelines, err := Load(repo, testClusters)
			require.NoError(t, err)
			_, err = NewRenderer(testClusters).RenderAll(repo, pipelines)
			if tt.msg == "" {
				require.NoError(t, err)
				return
			}
			at := locatedErr(t, err)
			assert.Equal(t, "chart/values.schema.json", at.File)
			assert.Contains(t, at.Msg, tt.msg)
		})
	}
}
