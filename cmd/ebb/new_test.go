package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNewFromExample writes the from-yaml example's pipeline again and checks that it is the
// committed one, that it validates, and that it plans against the cluster.
func TestNewFromExample(t *testing.T) {
	dir := copyRepo(t, "../../examples/from-yaml")
	out := filepath.Join(dir, "pipelines", "hello.yaml")
	require.NoError(t, os.Remove(out))
	code, _, stderr := ebb(t, "new", "--repo", dir, "--from", filepath.Join(dir, "apps/hello/app.yaml"),
		"--name", "hello", "--model", "blue-green", "--dev-cluster", "dev", "--prod-cluster", "prod",
		"--health-url", "http://hello.{namespace}.svc/healthz", "-o", out)
	require.Equal(t, 0, code, stderr)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	want, err := os.ReadFile("../../examples/from-yaml/pipelines/hello.yaml")
	require.NoError(t, err)
	assert.Equal(t, string(want), string(got))

	code, stdout, stderr := ebb(t, "validate", dir)
	assert.Equal(t, 0, code, stderr)
	assert.Equal(t, "1 pipelines valid, 2 stages rendered\n", stdout)

	code, stdout, stderr = ebb(t, "plan", "--repo", dir, "--kubeconfig", cluster.Kubeconfig, "--stage", "dev")
	assert.Equal(t, exitChanges, code, stderr)
	assert.Contains(t, stdout, "(cluster dev, namespace hello-dev, release sha256:")
	assert.Contains(t, stdout, "not enabled: plan only)")
	for _, obj := range []string{"Namespace/hello-dev", "Secret/hello-dev/hello-registry", "Service/hello-dev/hello", "Service/hello-dev/hello-preview"} {
		assert.Contains(t, stdout, "  "+obj+" created\n")
	}
	// The example is blue-green: the plan shows the color the daemon would create.
	assert.Regexp(t, `  Deployment/hello-dev/hello-[0-9a-f]{10} created\n`, stdout)
}

func TestNew(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		want   []string // lines the pipeline must have
		stderr string
	}{
		{"several services", nil, 2, nil,
			"error: the application has several Services (api, web): pick one with --service\nSee 'ebb --help'.\n"},
		{"picked by flag, rollback off, digest", []string{"--service", "api", "--rollback=false"}, 0, []string{
			"  service: api",
			"    image: registry.example.com/api",
			`    tag: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"`,
			"    rollback: false",
			"    model: rolling",
			"    namespace: two-dev",
			"  manifests: testdata",
		}, ""},
		{"unknown service", []string{"--service", "db"}, 2, nil,
			"error: --service \"db\": the application's Services are api, web\nSee 'ebb --help'.\n"},
		{"bad model", []string{"--model", "canary"}, 2, nil,
			"error: --model \"canary\": want rolling or blue-green\nSee 'ebb --help'.\n"},
		{"bad name", []string{"--service", "web", "--name", "Two_"}, 2, nil,
			"error: --name \"Two_\": a pipeline name is a DNS label: lowercase letters, digits and '-'\nSee 'ebb --help'.\n"},
		{"empty cluster", []string{"--service", "web", "--dev-cluster", ""}, 2, nil,
			"error: --dev-cluster and --prod-cluster name the clusters of the two stages\nSee 'ebb --help'.\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"new", "--from", "testdata/two-services.yaml", "--name", "two",
				"--dev-cluster", "dev", "--prod-cluster", "prod"}, tt.args...)
			code, stdout, stderr := ebb(t, args...)
			assert.Equal(t, tt.code, code, stderr)
			if tt.stderr != "" {
				assert.Equal(t, tt.stderr, stderr)
			}
			lines := strings.Split(stdout, "\n")
			for _, w := range tt.want {
				assert.Contains(t, lines, w)
			}
		})
	}
}

// newRepo copies the real applications, unchanged, and the fixtures of testdata/new into a
// temporary repository.
func newRepo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for dst, src := range map[string]string{
		"guestbook":           "../../planner/testdata/argocd-example-apps/guestbook",
		"kustomize-guestbook": "../../planner/testdata/argocd-example-apps/kustomize-guestbook",
		"sock-shop":           "../../planner/testdata/argocd-example-apps/sock-shop",
		"podinfo":             "../../planner/testdata/podinfo-kustomize",
		"selector":            "testdata/new/selector",
		"unrelated":           "testdata/new/unrelated",
		"no-service":          "testdata/new/no-service",
	} {
		require.NoError(t, os.CopyFS(filepath.Join(dir, dst), os.DirFS(src)))
	}
	return dir
}

// TestNewApps writes a pipeline for each real application, from a directory, a file or a
// kustomization, into a directory that does not exist yet, compares it with its golden file,
// and checks that `ebb validate` accepts it and `ebb plan` plans its dev stage.
func TestNewApps(t *testing.T) {
	tests := []struct {
		name   string // of the pipeline and of its golden file in testdata/new
		from   string // inside the repository
		args   []string
		golden string
		plan   []string // objects the dev stage's plan creates
	}{
		{"guestbook", "guestbook", nil, "guestbook.golden",
			[]string{"Service/guestbook-dev/guestbook-ui", "Deployment/guestbook-dev/guestbook-ui"}},
		{"guestbook", "guestbook/guestbook-ui-deployment.yaml", nil, "guestbook-file.golden",
			[]string{"Service/guestbook-dev/guestbook-ui", "Deployment/guestbook-dev/guestbook-ui"}},
		// The kustomization's namePrefix renames the Deployment and the Service.
		{"kustomize-guestbook", "kustomize-guestbook", nil, "kustomize-guestbook.golden",
			[]string{"Service/kustomize-guestbook-dev/kustomize-guestbook-ui", "Deployment/kustomize-guestbook-dev/kustomize-guestbook-ui"}},
		{"sock-shop", "sock-shop", []string{"--service", "front-end"}, "sock-shop.golden",
			[]string{"Service/sock-shop-dev/front-end", "Deployment/sock-shop-dev/front-end", "Deployment/sock-shop-dev/carts-db"}},
		{"podinfo", "podinfo", []string{"--model", "blue-green", "--health-url", "http://podinfo.{namespace}.svc:9898/healthz"}, "podinfo.golden",
			[]string{"Service/podinfo-dev/podinfo", "Service/podinfo-dev/podinfo-preview", "HorizontalPodAutoscaler/podinfo-dev/podinfo"}},
		// The Service selects web-server, not the Deployment named like it (there is none).
		{"selector", "selector", nil, "selector.golden",
			[]string{"Service/selector-dev/web", "Deployment/selector-dev/web-server", "Deployment/selector-dev/worker"}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			dir := newRepo(t)
			out := filepath.Join(dir, "pipelines", "does", "not", "exist", tt.name+".yaml")
			args := append([]string{"new", "--repo", dir, "--from", filepath.Join(dir, tt.from), "--name", tt.name,
				"--dev-cluster", "dev", "--prod-cluster", "prod", "-o", out}, tt.args...)
			code, stdout, stderr := ebb(t, args...)
			require.Equal(t, 0, code, stderr)
			assert.Empty(t, stdout)
			assert.Equal(t, "wrote pipeline \""+tt.name+"\" to "+out+"; it is not enabled yet: check `ebb plan`, then set spec.enabled\n", stderr)
			got, err := os.ReadFile(out)
			require.NoError(t, err)
			want, err := os.ReadFile(filepath.Join("testdata/new", tt.golden))
			require.NoError(t, err)
			assert.Equal(t, string(want), string(got))

			code, stdout, stderr = ebb(t, "validate", dir)
			assert.Equal(t, 0, code, stderr)
			assert.Equal(t, "1 pipelines valid, 2 stages rendered\n", stdout)

			code, stdout, stderr = ebb(t, "plan", "--repo", dir, "--kubeconfig", cluster.Kubeconfig, "--stage", "dev")
			assert.Equal(t, exitChanges, code, stderr)
			assert.Contains(t, stdout, "pipeline "+tt.name+", stage dev (cluster dev, namespace "+tt.name+"-dev, release sha256:")
			for _, obj := range tt.plan {
				assert.Contains(t, stdout, "  "+obj+" created\n")
			}
		})
	}
}

// TestNewAppErrors covers the applications ebb new cannot write a pipeline for without help.
func TestNewAppErrors(t *testing.T) {
	tests := []struct {
		name, from string
		args       []string
		code       int
		stderr     string
	}{
		{"several services, stdin not a terminal", "sock-shop", nil, 2,
			"error: the application has several Services (carts, carts-db, catalogue, catalogue-db, front-end, orders, orders-db, " +
				"payment, queue-master, rabbitmq, session-db, shipping, user, user-db): pick one with --service\nSee 'ebb --help'.\n"},
		{"unknown service", "sock-shop", []string{"--service", "frontend"}, 2,
			"error: --service \"frontend\": the application's Services are carts, carts-db, catalogue, catalogue-db, front-end, " +
				"orders, orders-db, payment, queue-master, rabbitmq, session-db, shipping, user, user-db\nSee 'ebb --help'.\n"},
		{"service that selects nothing", "no-service", []string{"--service", "external"}, 1,
			"error: manifests no-service: no Service selects a Deployment (Services: external); ebb deploys a Service and the Deployment it selects\n"},
		{"names that do not pair", "unrelated", nil, 1,
			"error: service \"frontend\" selects Deployment \"ui\", but a pipeline's service names both, so one name must contain the other: rename one\n"},
		{"no Deployment", "only-service", nil, 1,
			"error: manifests only-service have no Deployment: ebb deploys a Service and its Deployment\n"},
		{"bad YAML", "bad-yaml", nil, 1,
			"error: render manifests bad-yaml: kustomize bad-yaml: accumulating resources: accumulating resources from 'bad-yaml/s.yaml': " +
				"MalformedYAMLError: yaml: line 2: did not find expected ',' or '}' in File: bad-yaml/s.yaml\n"},
		{"outside the repository", "..", nil, 2, "error: --from {dir}/.. is outside the repository {dir} (set --repo)\nSee 'ebb --help'.\n"},
	}
	dir := newRepo(t)
	for file, data := range map[string]string{
		"only-service/s.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {app: s}}\n",
		"bad-yaml/s.yaml":     "apiVersion: v1\nkind: Service\nmetadata: {name: s\n",
	} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, filepath.Dir(file)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, file), []byte(data), 0o644))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(dir, "pipelines", tt.name+".yaml")
			args := append([]string{"new", "--repo", dir, "--from", dir + "/" + tt.from, "--name", "app",
				"--dev-cluster", "dev", "--prod-cluster", "prod", "-o", out}, tt.args...)
			devNull, err := os.Open(os.DevNull)
			require.NoError(t, err)
			defer devNull.Close()
			var stdout, stderr bytes.Buffer
			code := execute(context.Background(), args, devNull, &stdout, &stderr)
			assert.Equal(t, tt.code, code, stderr.String())
			assert.Equal(t, strings.ReplaceAll(tt.stderr, "{dir}", dir), stderr.String())
			assert.Empty(t, stdout.String())
			assert.NoFileExists(t, out)
		})
	}
}

// TestPickService asks on a terminal, and only there.
func TestPickService(t *testing.T) {
	a := &app{targets: []target{{service: "api"}, {service: "web"}}}
	tests := []struct {
		name, input string
		interactive bool
		want, err   string
	}{
		{"asks", "2\n", true, "web", ""},
		{"bad answer", "3\n", true, "", `no such choice "3"`},
		{"no terminal", "2\n", false, "", "the application has several Services (api, web): pick one with --service"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			got, err := pickService(strings.NewReader(tt.input), &stderr, a, "", tt.interactive)
			if tt.err != "" {
				require.EqualError(t, err, tt.err)
			} else {
				require.NoError(t, err)
				assert.Equal(t, tt.want, got.service)
			}
			if tt.interactive {
				assert.Equal(t, "The application has several Services. Which one does the pipeline deploy?\n  1) api\n  2) web\nNumber: ", stderr.String())
			} else {
				assert.Empty(t, stderr.String())
			}
		})
	}
	// /dev/null is a character device, not a terminal.
	devNull, err := os.Open(os.DevNull)
	require.NoError(t, err)
	defer devNull.Close()
	assert.False(t, isTerminal(devNull))
}
