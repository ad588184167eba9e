package charttest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// render runs helm template for release ebb in ebb-system with the values files and sets.
func render(t *testing.T, files []string, set ...string) rendered {
	t.Helper()
	args := []string{"template", "ebb", chartDir, "--namespace", "ebb-system"}
	for _, f := range files {
		args = append(args, "--values", filepath.Join(chartDir, "ci", f))
	}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := helm(args...)
	require.NoError(t, err, out)
	return parseRendered(t, out)
}

// strict decodes the rendered object kind/key into v, failing on any field v does not have.
func (r rendered) strict(t *testing.T, kind, key string, v any) {
	t.Helper()
	obj := r[kind][key]
	require.NotNil(t, obj, "no %s %s among %v", kind, key, r.names(kind))
	data, err := json.Marshal(obj.Object)
	require.NoError(t, err)
	require.NoError(t, yaml.UnmarshalStrict(data, v), "%s %s", kind, key)
}

// TestPodDisruptionBudget: a budget with two replicas or more, none with one (it would block
// every drain), and none when switched off.
func TestPodDisruptionBudget(t *testing.T) {
	assert.Empty(t, render(t, []string{"default-values.yaml"})["PodDisruptionBudget"], "one replica: no budget")
	assert.Empty(t, render(t, []string{"default-values.yaml"}, "replicaCount=3", "podDisruptionBudget.enabled=false")["PodDisruptionBudget"])

	r := render(t, []string{"default-values.yaml"}, "replicaCount=3")
	var pdb policyv1.PodDisruptionBudget
	r.strict(t, "PodDisruptionBudget", "ebb-system/ebb", &pdb)
	assert.Equal(t, 1, pdb.Spec.MinAvailable.IntValue())
	assert.Equal(t, map[string]string{"app.kubernetes.io/name": "ebb", "app.kubernetes.io/instance": "ebb"}, pdb.Spec.Selector.MatchLabels)
}

// prometheusRule is the part of the Prometheus Operator's PrometheusRule (monitoring.coreos.com/v1)
// the chart writes, for a strict decode: a field the operator does not know fails it.
type prometheusRule struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Groups []ruleGroup `json:"groups"`
	} `json:"spec"`
}

type ruleGroup struct {
	Name  string `json:"name"`
	Rules []struct {
		Alert       string            `json:"alert,omitempty"`
		Record      string            `json:"record,omitempty"`
		Expr        string            `json:"expr"`
		For         string            `json:"for,omitempty"`
		Labels      map[string]string `json:"labels,omitempty"`
		Annotations map[string]string `json:"annotations,omitempty"`
	} `json:"rules"`
}

// TestPrometheusRule renders the alerts, checks them with the real promtool, and runs
// promtool's rule unit tests (testdata/alerts_test.yaml): each alert fires on the series that
// mean it, for this release's namespace only, and stays quiet on healthy series.
func TestPrometheusRule(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		promtool = "/usr/bin/promtool"
	}
	assert.Empty(t, render(t, []string{"default-values.yaml"})["PrometheusRule"], "off by default")

	r := render(t, []string{"all-features-values.yaml"}, "prometheusRule.labels.release=prom")
	var rule prometheusRule
	r.strict(t, "PrometheusRule", "ebb-system/ebb", &rule)
	assert.Equal(t, "monitoring.coreos.com/v1", rule.APIVersion)
	assert.Equal(t, "prom", rule.Metadata.Labels["release"])
	var alerts []string
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
		}
	}
	assert.Equal(t, []string{"EbbRollbackFailed", "EbbPipelineStalled", "EbbExecutionsFailing", "EbbGitUnreachable"}, alerts)

	dir := t.TempDir()
	data, err := yaml.Marshal(map[string]any{"groups": rule.Spec.Groups})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "rules.yaml"), data, 0o600))
	out, err := exec.Command(promtool, "check", "rules", filepath.Join(dir, "rules.yaml")).CombinedOutput()
	require.NoError(t, err, "%s\n%s", out, data)
	assert.Contains(t, string(out), "SUCCESS: 4 rules found")

	tests, err := os.ReadFile("testdata/alerts_test.yaml")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "alerts_test.yaml"), tests, 0o600))
	out, err = exec.Command(promtool, "test", "rules", filepath.Join(dir, "alerts_test.yaml")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "SUCCESS")
}

// TestGrafanaDashboard: the dashboard ConfigMap holds valid JSON whose every query is valid
// PromQL (checked by the real promtool, as recording rules, with Grafana's variables given
// values) and reads ebb's metrics.
func TestGrafanaDashboard(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		promtool = "/usr/bin/promtool"
	}
	assert.Empty(t, render(t, []string{"default-values.yaml"})["ConfigMap"]["ebb-system/ebb-dashboard"], "off by default")

	r := render(t, []string{"all-features-values.yaml"})
	var cm corev1.ConfigMap
	r.strict(t, "ConfigMap", "ebb-system/ebb-dashboard", &cm)
	assert.Equal(t, "1", cm.Labels["grafana_dashboard"], "the label Grafana's sidecar looks for")
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal([]byte(cm.Data["ebb.json"]), &dash))
	assert.Equal(t, "ebb", dash.UID)
	require.NotEmpty(t, dash.Panels)

	vars := strings.NewReplacer("$__rate_interval", "5m", "$namespace", "ebb-system", "$pipeline", "web")
	metric := regexp.MustCompile(`\b(ebb_[a-z_]+)\b`)
	type record struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var records []record
	for _, p := range dash.Panels {
		require.NotEmpty(t, p.Targets, p.Title)
		for _, tg := range p.Targets {
			assert.Regexp(t, metric, tg.Expr, "%s reads an ebb metric", p.Title)
			records = append(records, record{Record: "panel", Expr: vars.Replace(tg.Expr)})
		}
	}
	data, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": records}}})
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "dashboard-queries.yaml")
	require.NoError(t, os.WriteFile(file, data, 0o600))
	out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput()
	require.NoError(t, err, "%s\n%s", out, data)
}

// TestRenderedObjectsPassTheAPIServer: every object the chart renders with every optional part
// on, PodDisruptionBudget and dashboard included, passes the real API server's strict field
// validation (a server-side dry run). The PrometheusRule and the ServiceMonitor need the
// Prometheus Operator's CRDs, which this cluster does not have: TestPrometheusRule checks the
// rule with promtool instead.
func TestRenderedObjectsPassTheAPIServer(t *testing.T) {
	const ns = "ebb-dryrun"
	out, err := kubectl(dev.Kubeconfig, "", "create", "namespace", ns)
	require.NoError(t, err, out)
	args := []string{"template", "ebb", chartDir, "--namespace", ns, "--values", filepath.Join(chartDir, "ci", "all-features-values.yaml"),
		"--set", "rbac.scope=cluster", "--set", "serviceMonitor.enabled=false", "--set", "prometheusRule.enabled=false"}
	manifest, err := helm(args...)
	require.NoError(t, err, manifest)
	r := parseRendered(t, manifest)
	for _, kind := range []string{"PodDisruptionBudget", "CustomResourceDefinition", "ValidatingAdmissionPolicy", "ConfigMap", "Deployment", "Ingress"} {
		require.NotEmpty(t, r[kind], kind)
	}
	out, err = kubectl(dev.Kubeconfig, manifest, "apply", "--dry-run=server", "--validate=strict", "--server-side", "--force-conflicts", "-f", "-")
	require.NoError(t, err, out)
	assert.Contains(t, out, "poddisruptionbudget.policy/ebb serverside-applied (server dry run)")
	assert.Contains(t, out, "configmap/ebb-dashboard serverside-applied (server dry run)")
}
