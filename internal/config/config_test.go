package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/planner"
)

func TestLoadValid(t *testing.T) {
	c, err := Load("testdata/valid.yaml")
	require.NoError(t, err)
	assert.True(t, c.AllowRemoteBases)
	assert.Equal(t, []string{"home", "dev", "prod"}, c.ClusterNames())
	assert.True(t, c.Cluster("home").InCluster)
	assert.Equal(t, "/etc/ebb/dev.kubeconfig", c.Cluster("dev").Kubeconfig)
	assert.Equal(t, &SecretKey{Namespace: "ebb-system", Name: "prod-kubeconfig", Key: "kubeconfig"}, c.Cluster("prod").KubeconfigSecret)
	assert.Nil(t, c.Cluster("staging"))
}

func TestLoadInvalid(t *testing.T) {
	_, err := Load("testdata/invalid.yaml")
	require.Error(t, err)
	assert.Equal(t, []string{
		`testdata/invalid.yaml:3:19: allowRemoteBases: expected a boolean (true or false), got "no"`,
		`testdata/invalid.yaml:7:3: unknown field "context" in clusters[0]`,
		`testdata/invalid.yaml:8:9: duplicate cluster name "dev"`,
		`testdata/invalid.yaml:10:3: cluster "Prod" needs exactly one of inCluster, kubeconfig and kubeconfigSecret, found 0`,
		`testdata/invalid.yaml:10:9: bad cluster name "Prod": use lowercase letters, digits and '-'`,
		`testdata/invalid.yaml:11:3: missing required field "name" in clusters[3]`,
		`testdata/invalid.yaml:11:21: missing required field "key" in clusters[3].kubeconfigSecret`,
	}, strings.Split(err.Error(), "\n"))
}

func TestRESTConfigFromKubeconfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	require.NoError(t, os.WriteFile(path, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: secret-token}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600))
	cl := Cluster{Name: "dev", Kubeconfig: path}
	cfg, err := cl.RESTConfig(t.Context(), nil)
	require.NoError(t, err)
	assert.Equal(t, "https://127.0.0.1:6443", cfg.Host)

	_, err = (&Cluster{Name: "prod", KubeconfigSecret: &SecretKey{Namespace: "ns", Name: "s", Key: "k"}}).RESTConfig(t.Context(), nil)
	assert.EqualError(t, err, `cluster "prod": reading Secret ns/s needs a client of the daemon's cluster`)
}

// TestLimits checks the limits section: sizes as quantities or integers, a duration, the
// planner's default for each one left out, and a located error for each bad value.
func TestLimits(t *testing.T) {
	c, err := Parse("c.yaml", []byte(`apiVersion: ebb.dev/v1alpha1
kind: Config
limits:
  maxFileBytes: 2Mi
  maxRenderBytes: 20000000
  maxYAMLDepth: 50
  renderTimeout: 30s
`))
	require.NoError(t, err)
	want := planner.DefaultLimits()
	want.MaxFileBytes, want.MaxRenderBytes, want.MaxYAMLDepth, want.RenderTimeout = 2<<20, 20000000, 50, 30*time.Second
	assert.Equal(t, want, c.Limits.Planner())

	c, err = Parse("c.yaml", []byte("apiVersion: ebb.dev/v1alpha1\nkind: Config\n"))
	require.NoError(t, err)
	assert.Equal(t, planner.DefaultLimits(), c.Limits.Planner())

	_, err = Parse("c.yaml", []byte(`apiVersion: ebb.dev/v1alpha1
kind: Config
limits:
  maxFileBytes: ten
  maxRenderBytes: -1Mi
  maxDocuments: 0
  maxYAMLAliases: many
  renderTimeout: 10
  maxKeys: 3
`))
	require.Error(t, err)
	assert.Equal(t, []string{
		`c.yaml:4:17: limits.maxFileBytes: bad size "ten": want a positive number of bytes such as 10Mi, 50M or 1048576`,
		`c.yaml:5:19: limits.maxRenderBytes: bad size "-1Mi": want a positive number of bytes such as 10Mi, 50M or 1048576`,
		`c.yaml:6:17: limits.maxDocuments must be positive, got 0`,
		`c.yaml:7:19: limits.maxYAMLAliases: expected an integer, got "many"`,
		`c.yaml:8:18: limits.renderTimeout: expected a duration such as 10s or 1m, got the number 10`,
		`c.yaml:9:3: unknown field "maxKeys" in limits`,
	}, strings.Split(err.Error(), "\n"))
}
