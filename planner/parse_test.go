package planner

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/planner/strictyaml"
)

var testClusters = Options{Clusters: []string{"dev", "prod"}}

// TestParseFileMalformed checks the exact `file:line:col: message` of every error of each
// malformed fixture: all errors of a file come at once.
func TestParseFileMalformed(t *testing.T) {
	tests := []struct {
		file string
		want []string
	}{
		{"unknown-field.yaml", []string{
			`unknown-field.yaml:12:5: unknown field "strategy" in spec.stages[0]`,
		}},
		{"wrong-types.yaml", []string{
			`wrong-types.yaml:6:12: spec.enabled: expected a boolean (true or false), got "yes"`,
			`wrong-types.yaml:11:10: spec.input.tag: expected a string, got the number 1.20; quote it to make it a string`,
			`wrong-types.yaml:17:17: spec.stages[0].phases[0].replicas: expected an integer, got "one"`,
			`wrong-types.yaml:18:15: spec.stages[0].rollback: expected a boolean (true or false), got a list`,
			`wrong-types.yaml:22:20: spec.stages[0].verify.healthCheck.successes: expected an integer, got the number 2.5`,
		}},
		{"duplicate-stage.yaml", []string{
			`duplicate-stage.yaml:12:11: duplicate stage name "dev"`,
		}},
		{"unknown-cluster.yaml", []string{
			`unknown-cluster.yaml:10:14: unknown cluster "staging": the daemon config defines "dev", "prod"`,
		}},
		{"bad-durations.yaml", []string{
			`bad-durations.yaml:13:26: spec.stages[0].verify.rollout.timeout: bad duration "5 minutes": want a positive duration such as 30s, 5m or 1h30m`,
			`bad-durations.yaml:14:82: spec.stages[0].verify.metrics.interval: bad duration "-15s": want a positive duration such as 30s, 5m or 1h30m`,
			`bad-durations.yaml:14:93: spec.stages[0].verify.metrics.for: bad duration "0s": want a positive duration such as 30s, 5m or 1h30m`,
			`bad-durations.yaml:17:16: spec.stages[0].approval.timeout: expected a duration such as 30s, 5m or 1h30m, got the number 300`,
		}},
		{"missing-service.yaml", []string{
			`missing-service.yaml:6:3: missing required field "service" in spec`,
		}},
		{"bad-image.yaml", []string{
			`bad-image.yaml:7:12: bad image reference "Registry.example.com/Team/Web:1.0": put the tag in input.tag, not in the image`,
			`bad-image.yaml:8:10: bad image tag "not a tag": want a tag such as 1.4.2 or a digest sha256:<64 hex digits>`,
		}},
		{"manifests-outside.yaml", []string{
			`manifests-outside.yaml:6:14: manifests path "../other-repo/apps/web" leaves the repository: ".." is not allowed`,
			`manifests-outside.yaml:15:16: manifests path "/etc/kubernetes" is absolute; write it relative to the repository root`,
		}},
		{"syntax.yaml", []string{
			`syntax.yaml:10:4: invalid YAML: did not find expected key`,
		}},
		{"header.yaml", []string{
			`header.yaml:1:13: apiVersion must be "ebb.dev/v1alpha1", got "ebb.dev/v1"`,
			`header.yaml:2:7: kind must be "Pipeline", got "Pipline"`,
			`header.yaml:4:9: bad pipeline name "Web_App": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character`,
		}},
		{"model.yaml", []string{
			`model.yaml:12:12: spec.stages[0].model: unknown model "canary", want "rolling" or "blue-green"`,
			`model.yaml:18:5: phases need model "rolling", this stage is "blue-green"`,
			`model.yaml:18:17: a phase needs at least 1 replica, got 0`,
			`model.yaml:19:15: missing required field "approvers" in spec.stages[1].approval`,
			`model.yaml:23:13: one phase is supported, e.g. phases: [{replicas: 1}]; got 2`,
			`model.yaml:24:16: blueGreen needs model "blue-green", this stage is "rolling"`,
		}},
		{"no-stages.yaml", []string{
			`no-stages.yaml:6:3: missing required field "stages" in spec: a pipeline needs at least one stage`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", "malformed", tt.file))
			require.NoError(t, err)
			pipelines, err := ParseFile(tt.file, data, testClusters)
			require.Error(t, err)
			assert.Nil(t, pipelines)
			var list strictyaml.ErrorList
			require.True(t, errors.As(err, &list), "error is a strictyaml.ErrorList")
			assert.Equal(t, tt.want, strings.Split(err.Error(), "\n"))
		})
	}
}

// TestParseFileDefaults checks the documented defaults of an almost empty stage.
func TestParseFileDefaults(t *testing.T) {
	data := []byte(`apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  manifests: app
  service: web
  stages:
  - {name: dev, cluster: dev, namespace: web-dev}
  - name: prod
    cluster: prod
    namespace: web
    selfHeal: false
    verify:
      healthCheck: {url: "http://web/healthz"}
      metrics: {prometheus: "http://prom:9090", query: up, min: 1}
    approval: {approvers: [alice]}
`)
	pipelines, err := ParseFile("web.yaml", data, testClusters)
	require.NoError(t, err)
	require.Len(t, pipelines, 1)
	p := pipelines[0]
	assert.False(t, p.Spec.Enabled, "enabled defaults to false")
	dev, prod := p.StageNamed("dev"), p.StageNamed("prod")
	require.NotNil(t, dev)
	require.NotNil(t, prod)
	assert.Equal(t, ModelRolling, dev.Model)
	assert.True(t, dev.SelfHeal)
	assert.False(t, dev.Rollback)
	assert.Equal(t, 5*time.Minute, dev.Verify.Rollout.Timeout.Duration)
	assert.Nil(t, dev.Verify.HealthCheck)
	assert.False(t, prod.SelfHeal)
	assert.Equal(t, HealthCheck{URL: "http://web/healthz", Interval: Duration{5 * time.Second}, Successes: 3, Failures: 3, Timeout: Duration{2 * time.Minute}}, *prod.Verify.HealthCheck)
	assert.Equal(t, 15*time.Second, prod.Verify.Metrics.Interval.Duration)
	assert.Equal(t, 2*time.Minute, prod.Verify.Metrics.For.Duration)
	assert.Equal(t, 24*time.Hour, prod.Approval.Timeout.Duration)
	assert.Equal(t, "app", p.ManifestsOf(prod))
}

// TestParseFileClustersUnchecked checks that without a daemon config any cluster name passes.
func TestParseFileClustersUnchecked(t *testing.T) {
	data, err := os.ReadFile("testdata/malformed/unknown-cluster.yaml")
	require.NoError(t, err)
	_, err = ParseFile("unknown-cluster.yaml", data, DefaultOptions())
	assert.NoError(t, err)
}

func TestCheckImageName(t *testing.T) {
	tests := []struct {
		image string
		ok    bool
	}{
		{"nginx", true},
		{"registry.example.com/team/web", true},
		{"localhost:5000/web", true},
		{"gcr.io/google-samples/gb-frontend", true},
		{"Web", false},
		{"web:1.0", false},
		{"web@sha256:abc", false},
		{"registry..example.com/web", false},
		{"-web", false},
	}
	for _, tt := range tests {
		t.Run(tt.image, func(t *testing.T) {
			err := checkImageName(tt.image)
			assert.Equal(t, tt.ok, err == nil, "%v", err)
		})
	}
}
