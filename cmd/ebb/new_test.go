package main

import (
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
