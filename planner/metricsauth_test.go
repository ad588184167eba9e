package planner

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// metricsPipeline is a pipeline whose prod stage's metrics check has auth (YAML, indented for
// its place under metrics:).
func metricsPipeline(auth string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  manifests: app
  service: web
  stages:
  - name: prod
    cluster: prod
    namespace: web
    verify:
      metrics:
        prometheus: https://thanos.example:9090
        query: up
        min: 1
        auth:
%s`, auth))
}

func TestMetricsAuth(t *testing.T) {
	pipelines, err := ParseFile("web.yaml", metricsPipeline(`          basicAuth:
            username: ebb
            password: {secret: {name: prometheus, key: password}}
          tls:
            ca: {file: /etc/ebb/prometheus/ca.crt}
            serverName: thanos.example
`), testClusters)
	require.NoError(t, err)
	auth := pipelines[0].StageNamed("prod").Verify.Metrics.Auth
	require.NotNil(t, auth)
	assert.Equal(t, &MetricsBasicAuth{Username: "ebb", Password: SecretSource{Secret: &SecretKeyRef{Name: "prometheus", Key: "password"}}}, auth.BasicAuth)
	assert.Equal(t, &MetricsTLS{CA: &SecretSource{File: "/etc/ebb/prometheus/ca.crt"}, ServerName: "thanos.example"}, auth.TLS)

	pipelines, err = ParseFile("web.yaml", metricsPipeline("          bearerToken: {file: /var/run/secrets/prometheus/token}\n"), testClusters)
	require.NoError(t, err)
	assert.Equal(t, &SecretSource{File: "/var/run/secrets/prometheus/token"}, pipelines[0].StageNamed("prod").Verify.Metrics.Auth.BearerToken)
}

// TestMetricsAuthErrors: a credential written in the pipeline, or an auth that cannot work, is
// an error at its file:line:col, and the credential is not repeated in it.
func TestMetricsAuthErrors(t *testing.T) {
	const at = "spec.stages[0].verify.metrics.auth"
	for _, tc := range []struct {
		name, auth string
		want       []string
	}{
		{"inline password", "          basicAuth: {username: ebb, password: hunter2-inline}\n",
			[]string{"web.yaml:17:", at + ".basicAuth.password", "a credential is never written in the pipeline", "{secret: {name: NAME, key: KEY}}"}},
		{"inline token", "          bearerToken: hunter2-inline\n",
			[]string{"web.yaml:17:", at + ".bearerToken", "a credential is never written in the pipeline"}},
		{"secret and file", "          bearerToken: {file: /t, secret: {name: p, key: t}}\n",
			[]string{at + ".bearerToken: set secret or file, not both"}},
		{"no source", "          bearerToken: {}\n", []string{at + ".bearerToken: set secret: {name, key}"}},
		{"half a Secret reference", "          bearerToken: {secret: {name: p}}\n", []string{at + ".bearerToken.secret needs name and key"}},
		{"bad Secret name", "          bearerToken: {secret: {name: Prom_Secret, key: t}}\n", []string{`bad Secret name "Prom_Secret"`}},
		{"two Authorization headers", "          basicAuth: {username: u, password: {file: /p}}\n          bearerToken: {file: /t}\n",
			[]string{"basicAuth and bearerToken both set an Authorization header"}},
		{"no user name", "          basicAuth: {password: {file: /p}}\n", []string{`missing required field "username" in ` + at + ".basicAuth"}},
		{"cert without key", "          tls: {cert: {file: /c}}\n", []string{"cert and key go together"}},
		{"unknown field", "          bearerToken: {value: x}\n", []string{`unknown field "value"`}},
		{"empty auth", "          {}\n", []string{at + " is empty"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFile("web.yaml", metricsPipeline(tc.auth), testClusters)
			require.Error(t, err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.NotContains(t, err.Error(), "hunter2")
		})
	}
}
