package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		code       int
		stdout     string
		stderrLine []string
	}{
		{"examples", []string{"validate", "../../examples/rolling-upgrade", "../../examples/blue-green", "../../examples/from-yaml"},
			0, "3 pipelines valid, 6 stages rendered\n", nil},
		{"argocd example apps", []string{"validate", "../../planner/testdata/argocd-example-apps"},
			0, "3 pipelines valid, 3 stages rendered\n", nil},
		{"one bad file", []string{"validate", "../../planner/testdata/repos/mixed"},
			1, "2 errors; 1 pipelines valid\n", []string{
				`../../planner/testdata/repos/mixed/pipelines/bad.yaml:12:16: manifests path "no/such/dir" is not a directory of the repository`,
				`../../planner/testdata/repos/mixed/pipelines/bad.yaml:16:16: manifests path "app/deployment.yaml" is not a directory of the repository`,
			}},
		{"duplicate names", []string{"validate", "../../planner/testdata/repos/duplicate"},
			1, "2 errors; 1 pipelines valid\n", []string{
				`../../planner/testdata/repos/duplicate/pipelines/a-takeover.yaml:5:9: duplicate pipeline name "web": also declared in pipelines/web.yaml; no pipeline of this name runs until only one file declares it`,
				`../../planner/testdata/repos/duplicate/pipelines/web.yaml:4:9: duplicate pipeline name "web": also declared in pipelines/a-takeover.yaml; no pipeline of this name runs until only one file declares it`,
			}},
		{"unknown cluster", []string{"validate", "--config", "testdata/config.yaml", "../../examples/rolling-upgrade"},
			1, "1 errors; 0 pipelines valid\n", []string{
				`../../examples/rolling-upgrade/pipelines/web.yaml:17:14: unknown cluster "dev": the daemon config defines "staging", "prod"`,
			}},
		{"render error", []string{"validate", "testdata/render-error"},
			1, "1 errors; 0 pipelines valid\n", []string{
				`testdata/render-error/pipelines/web.yaml:6:14: render stage "dev" of pipeline "web": no container of Deployment "web" uses image registry.example.com/other (it runs nginx:1.27)`,
			}},
		{"not a directory", []string{"validate", "no-such-dir"}, 1, "", []string{"error: validate no-such-dir: not a directory"}},
		{"bad output", []string{"validate", "-o", "xml"}, 2, "", []string{`error: -o "xml": want one of [yaml json]`, "See 'ebb --help'."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := ebb(t, tt.args...)
			assert.Equal(t, tt.code, code, stderr)
			assert.Equal(t, tt.stdout, stdout)
			var lines []string
			if stderr != "" {
				lines = strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			}
			assert.Equal(t, tt.stderrLine, lines)
		})
	}
}
