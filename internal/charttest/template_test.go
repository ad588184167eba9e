package charttest

import (
	"bytes"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/planner"
)

// rendered is the output of `helm template`, by kind and then namespace/name.
type rendered map[string]map[string]*unstructured.Unstructured

func parseRendered(t *testing.T, out string) rendered {
	t.Helper()
	r := rendered{}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewBufferString(out), 4096)
	for {
		obj := &unstructured.Unstructured{}
		err := dec.Decode(&obj.Object)
		if errors.Is(err, io.EOF) {
			return r
		}
		require.NoError(t, err)
		if len(obj.Object) == 0 {
			continue
		}
		if r[obj.GetKind()] == nil {
			r[obj.GetKind()] = map[string]*unstructured.Unstructured{}
		}
		r[obj.GetKind()][obj.GetNamespace()+"/"+obj.GetName()] = obj
	}
}

func (r rendered) names(kind string) []string {
	var out []string
	for k := range r[kind] {
		out = append(out, k)
	}
	return out
}

// into converts the object kind ns/name to a typed value.
func (r rendered) into(t *testing.T, kind, key string, v any) {
	t.Helper()
	obj := r[kind][key]
	require.NotNil(t, obj, "no %s %s among %v", kind, key, r.names(kind))
	require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, v))
}

// daemonConfig parses the rendered daemon config with the daemon's own parser.
func (r rendered) daemonConfig(t *testing.T, key string) *config.Config {
	t.Helper()
	data, _, _ := unstructured.NestedString(r["ConfigMap"][key].Object, "data", "config.yaml")
	cfg, err := config.Parse("config.yaml", []byte(data))
	require.NoError(t, err, data)
	return cfg
}

func args(t *testing.T, r rendered) []string {
	t.Helper()
	var d appsv1.Deployment
	r.into(t, "Deployment", "ebb-system/ebb", &d)
	return d.Spec.Template.Spec.Containers[0].Args
}

// TestLint: `helm lint --strict` passes on the chart as it is, with no values (the required
// git.url is reported, not failed, as helm does for required values), and with each values file
// of ci/.
func TestLint(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	require.NoError(t, err)
	require.Len(t, files, 2, "ci/ holds the lint values")
	for _, tc := range append([]string{""}, files...) {
		t.Run(filepath.Base(tc), func(t *testing.T) {
			args := []string{"lint", "--strict", chartDir}
			if tc != "" {
				args = append(args, "--values", tc)
			}
			out, err := helm(args...)
			require.NoError(t, err, out)
			assert.Contains(t, out, "1 chart(s) linted, 0 chart(s) failed")
			assert.NotContains(t, out, "[WARNING]")
			assert.NotContains(t, out, "[ERROR]")
		})
	}
}

// chartAppVersion is Chart.yaml's appVersion: the version of the image, and of the binary the
// Makefile builds.
func chartAppVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	require.NoError(t, err)
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	require.NoError(t, yaml.Unmarshal(data, &chart))
	require.NotEmpty(t, chart.AppVersion)
	return chart.AppVersion
}

func TestTemplate(t *testing.T) {
	const url = "https://git.example.com/team/deploy.git"
	for _, tc := range []struct {
		name   string
		values []string
		check  func(t *testing.T, r rendered)
	}{
		{
			name:   "defaults",
			values: []string{"git.url=" + url},
			check: func(t *testing.T, r rendered) {
				for kind, key := range map[string]string{
					"ServiceAccount": "ebb-system/ebb", "ConfigMap": "ebb-system/ebb", "Service": "ebb-system/ebb",
					"Role": "ebb-system/ebb", "RoleBinding": "ebb-system/ebb", "ClusterRole": "/ebb-ebb-system-deploy", "ClusterRoleBinding": "/ebb-ebb-system-deploy",
				} {
					assert.Contains(t, r.names(kind), key, kind)
				}
				assert.Empty(t, r["ServiceMonitor"])
				assert.Empty(t, r["Ingress"])
				assert.Len(t, r["Role"], 1, "no per-namespace Roles in cluster scope")

				cfg := r.daemonConfig(t, "ebb-system/ebb")
				require.Len(t, cfg.Clusters, 1)
				assert.True(t, cfg.Clusters[0].InCluster)
				assert.Equal(t, planner.DefaultLimits(), cfg.Limits.Planner(), "renderLimits: {} keeps the planner's defaults")

				var d appsv1.Deployment
				r.into(t, "Deployment", "ebb-system/ebb", &d)
				assert.EqualValues(t, 1, *d.Spec.Replicas)
				pod := d.Spec.Template.Spec
				c := pod.Containers[0]
				assert.Equal(t, []string{"run", "--repo=" + url, "--branch=main", "--interval=30s", "--resync=1m", "--retry-backoff=30s",
					"--max-concurrent-executions=32", "--kube-qps=100", "--kube-burst=200",
					"--config=/etc/ebb/config/config.yaml", "--listen=:8080", "--cache-dir=/var/cache/ebb",
					"--leader-elect=true", "--shards=1", "--identity=$(POD_NAME)", "--log-level=info"}, c.Args)
				assert.Equal(t, "ghcr.io/ebb-dev/ebb:"+chartAppVersion(t), c.Image, "the image tag is the chart's appVersion")
				assert.Equal(t, "metadata.namespace", c.Env[1].ValueFrom.FieldRef.FieldPath)
				assert.Equal(t, "POD_NAMESPACE", c.Env[1].Name)
				assert.True(t, *pod.SecurityContext.RunAsNonRoot)
				assert.Equal(t, "RuntimeDefault", string(pod.SecurityContext.SeccompProfile.Type))
				assert.True(t, *c.SecurityContext.ReadOnlyRootFilesystem)
				assert.False(t, *c.SecurityContext.AllowPrivilegeEscalation)
				assert.Equal(t, "ALL", string(c.SecurityContext.Capabilities.Drop[0]))
				assert.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path)
				assert.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
				assert.False(t, c.Resources.Limits.Memory().IsZero())
				assert.False(t, c.Resources.Requests.Cpu().IsZero())
				mounts := map[string]string{}
				for _, m := range c.VolumeMounts {
					mounts[m.Name] = m.MountPath
				}
				assert.Equal(t, map[string]string{"config": "/etc/ebb/config", "cache": "/var/cache/ebb", "tmp": "/tmp"}, mounts)
			},
		},
		{
			name:   "render limits",
			values: []string{"git.url=" + url, "renderLimits.maxFileBytes=2Mi", "renderLimits.maxRenderBytes=20000000", "renderLimits.maxYAMLDepth=50", "renderLimits.renderTimeout=30s"},
			check: func(t *testing.T, r rendered) {
				want := planner.DefaultLimits()
				want.MaxFileBytes, want.MaxRenderBytes, want.MaxYAMLDepth, want.RenderTimeout = 2<<20, 20000000, 50, 30*time.Second
				assert.Equal(t, want, r.daemonConfig(t, "ebb-system/ebb").Limits.Planner())
			},
		},
		{
			name: "namespaced RBAC",
			values: []string{"git.url=" + url, "rbac.scope=namespaces", "rbac.namespaces={team-a,team-b}",
				`rbac.extraRules[0].apiGroups={networking.k8s.io}`, "rbac.extraRules[0].resources={ingresses}", "rbac.extraRules[0].verbs={get,list,create,patch,delete}"},
			check: func(t *testing.T, r rendered) {
				assert.ElementsMatch(t, []string{"ebb-system/ebb", "team-a/ebb-ebb-system-deploy", "team-b/ebb-ebb-system-deploy"}, r.names("Role"))
				assert.ElementsMatch(t, []string{"ebb-system/ebb", "team-a/ebb-ebb-system-deploy", "team-b/ebb-ebb-system-deploy"}, r.names("RoleBinding"))
				assert.Equal(t, []string{"/ebb-ebb-system-namespaces"}, r.names("ClusterRole"), "no cluster-wide deploy rights")
				var cr rbacv1.ClusterRole
				r.into(t, "ClusterRole", "/ebb-ebb-system-namespaces", &cr)
				require.Len(t, cr.Rules, 1)
				assert.Equal(t, []string{"team-a", "team-b"}, cr.Rules[0].ResourceNames)
				assert.Equal(t, []string{"get", "patch"}, cr.Rules[0].Verbs)
				var role rbacv1.Role
				r.into(t, "Role", "team-b/ebb-ebb-system-deploy", &role)
				last := role.Rules[len(role.Rules)-1]
				assert.Equal(t, []string{"ingresses"}, last.Resources, "extraRules are added")
				var rb rbacv1.RoleBinding
				r.into(t, "RoleBinding", "team-a/ebb-ebb-system-deploy", &rb)
				assert.Equal(t, rbacv1.Subject{Kind: "ServiceAccount", Name: "ebb", Namespace: "ebb-system"}, rb.Subjects[0])
			},
		},
		{
			name: "monitoring, webhook ingress, several clusters, existing secrets",
			values: []string{"git.url=" + url, "git.tag=v1", "git.path=deploy", "git.credentials.existingSecret=ebb-git",
				"webhook.existingSecret=ebb-webhook", "serviceMonitor.enabled=true", "serviceMonitor.labels.release=prom",
				"ingress.enabled=true", "ingress.host=ebb.example.com", "ingress.tlsSecretName=ebb-tls", "replicaCount=2",
				"clusters[0].name=dev", "clusters[0].inCluster=true",
				"clusters[1].name=prod", "clusters[1].kubeconfigSecret.name=prod-kubeconfig",
				"clusters[2].name=edge", "clusters[2].kubeconfigSecret.name=edge-kubeconfig", "clusters[2].kubeconfigSecret.key=value",
				"rbac.metricsSecrets={prometheus-auth}"},
			check: func(t *testing.T, r rendered) {
				cfg := r.daemonConfig(t, "ebb-system/ebb")
				assert.Equal(t, []string{"dev", "prod", "edge"}, cfg.ClusterNames())
				assert.Equal(t, &config.SecretKey{Namespace: "ebb-system", Name: "prod-kubeconfig", Key: "kubeconfig"}, cfg.Cluster("prod").KubeconfigSecret)
				assert.Equal(t, &config.SecretKey{Namespace: "ebb-system", Name: "edge-kubeconfig", Key: "value"}, cfg.Cluster("edge").KubeconfigSecret)

				var role rbacv1.Role
				r.into(t, "Role", "ebb-system/ebb", &role)
				secrets := role.Rules[len(role.Rules)-2:]
				assert.Equal(t, []rbacv1.PolicyRule{
					{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"prod-kubeconfig", "edge-kubeconfig"}, Verbs: []string{"get", "list", "watch"}},
					{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"prometheus-auth"}, Verbs: []string{"get"}},
				}, secrets, "the kubeconfig Secrets and the metrics checks' Secrets, and no others")

				a := args(t, r)
				assert.Contains(t, a, "--tag=v1")
				assert.NotContains(t, a, "--branch=main")
				assert.Contains(t, a, "--path=deploy")
				assert.Contains(t, a, "--git-credentials-dir=/etc/ebb/git")
				assert.Contains(t, a, "--webhook-secret-file=/etc/ebb/webhook/secret")

				assert.Contains(t, r.names("ServiceMonitor"), "ebb-system/ebb")
				assert.Equal(t, "prom", r["ServiceMonitor"]["ebb-system/ebb"].GetLabels()["release"])
				paths, _, _ := unstructured.NestedSlice(r["Ingress"]["ebb-system/ebb"].Object, "spec", "rules")
				require.Len(t, paths, 1)
				rule := paths[0].(map[string]any)["http"].(map[string]any)["paths"].([]any)[0].(map[string]any)
				assert.Equal(t, "/webhook", rule["path"], "only the webhook is exposed")
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"template", "ebb", chartDir, "--namespace", "ebb-system"}
			for _, v := range tc.values {
				args = append(args, "--set", v)
			}
			out, err := helm(args...)
			require.NoError(t, err, out)
			tc.check(t, parseRendered(t, out))
		})
	}
}

// TestSchemaRejectsBadValues: helm refuses values the chart cannot work with, naming them.
func TestSchemaRejectsBadValues(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []string
		want   []string
	}{
		{"missing git.url", nil, []string{"deployment.yaml", "git.url is required"}},
		{"replicas as a string", []string{"git.url=x", "--set-string", "replicaCount=2"}, []string{"/replicaCount", "want integer"}},
		{"unknown key", []string{"git.url=x", "--set", "replicas=2"}, []string{"additional properties 'replicas' not allowed"}},
		{"unknown git key", []string{"git.url=x", "--set", "git.ref=main"}, []string{"additional properties 'ref' not allowed"}},
		{"bad cluster name", []string{"git.url=x", "--set", "clusters[0].name=Prod"}, []string{"/clusters/0/name"}},
		{"cluster with two sources", []string{"git.url=x", "--set", "clusters[0].name=dev,clusters[0].inCluster=true,clusters[0].kubeconfigSecret.name=k"}, []string{"/clusters/0", "oneOf"}},
		{"cluster without a source", []string{"git.url=x", "--set", "clusters[0].name=dev"}, []string{"/clusters/0", "oneOf"}},
		{"namespaced RBAC without namespaces", []string{"git.url=x", "--set", "rbac.scope=namespaces"}, []string{"/rbac"}},
		{"unknown RBAC scope", []string{"git.url=x", "--set", "rbac.scope=everything"}, []string{"/rbac/scope"}},
		{"bad duration", []string{"git.url=x", "--set", "git.interval=often"}, []string{"/git/interval"}},
		{"bad render limit", []string{"git.url=x", "--set", "renderLimits.maxFileBytes=lots"}, []string{"/renderLimits/maxFileBytes"}},
		{"unknown render limit", []string{"git.url=x", "--set", "renderLimits.maxFiles=3"}, []string{"additional properties 'maxFiles' not allowed"}},
		{"ingress without a webhook secret", []string{"git.url=x", "--set", "ingress.enabled=true", "--set", "ingress.host=ebb.example.com"}, []string{"needs webhook.existingSecret"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"template", "ebb", chartDir}
			if len(tc.values) > 0 {
				args = append(args, "--set")
				args = append(args, tc.values...)
			}
			out, err := helm(args...)
			require.Error(t, err, out)
			for _, w := range tc.want {
				assert.Contains(t, out, w)
			}
		})
	}
}

// TestVersionFromOnePlace: the Makefile builds the binary with the chart's appVersion, which is
// also the image tag the chart deploys by default, and a binary so built says it.
func TestVersionFromOnePlace(t *testing.T) {
	root := filepath.Dir(filepath.Dir(chartDir))
	want := chartAppVersion(t)
	out, err := exec.Command("make", "-s", "-C", root, "version").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, want, strings.TrimSpace(string(out)))

	bin := filepath.Join(t.TempDir(), "ebb")
	out, err = exec.Command("make", "-s", "-C", root, "build", "BIN="+bin).CombinedOutput()
	require.NoError(t, err, "%s", out)
	out, err = exec.Command(bin, "version", "--client").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Regexp(t, `^Client Version: `+regexp.QuoteMeta(want)+` \(`, string(out))

	// The Makefile's tags leave out kustomize's Go plugin loader: a binary that links package
	// plugin keeps every method and exports every symbol (TAGS in the Makefile).
	f, err := elf.Open(bin)
	require.NoError(t, err)
	defer f.Close()
	syms, err := f.Symbols()
	require.NoError(t, err)
	for _, s := range syms {
		assert.NotEqual(t, "plugin.Open", s.Name, "the binary links package plugin")
	}
	dyn, _ := f.DynamicSymbols()
	assert.Less(t, len(dyn), 1000, "the binary exports its symbols, as one that links package plugin does")
}
