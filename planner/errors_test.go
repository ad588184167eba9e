package planner

import (
	"errors"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/planner/strictyaml"
)

// TestRenderAllNamesFailedPipelines checks that RenderAll's errors say which pipeline and
// stage failed, also for two pipelines of one file, and still read as a strictyaml.ErrorList.
func TestRenderAllNamesFailedPipelines(t *testing.T) {
	pipelines, err := ParseFile("pipelines/two.yaml", []byte(`apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: good}
spec:
  manifests: app
  service: web
  stages: [{name: dev, cluster: dev, namespace: good-dev}]
---
apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: bad}
spec:
  manifests: app
  service: api
  stages:
  - {name: dev, cluster: dev, namespace: bad-dev}
  - {name: prod, cluster: prod, namespace: bad}
`), testClusters)
	require.NoError(t, err)
	releases, err := NewRenderer(testClusters).RenderAll(NewRepo(os.DirFS("testdata/repos/hash-a")), pipelines)
	require.Len(t, releases, 1)
	assert.Equal(t, "good", releases[0].Pipeline)

	var stages RenderErrors
	require.True(t, errors.As(err, &stages), "error is RenderErrors")
	require.Len(t, stages, 2)
	for i, stage := range []string{"dev", "prod"} {
		assert.Equal(t, "bad", stages[i].Pipeline)
		assert.Equal(t, stage, stages[i].Stage)
		assert.Equal(t, "pipelines/two.yaml", stages[i].Err.File)
		assert.Equal(t, 13, stages[i].Err.Pos.Line, "located at spec.manifests")
	}
	assert.Equal(t, `pipelines/two.yaml:13:14: render stage "dev" of pipeline "bad": service "api": the manifests have no Deployment named "api"`, stages[0].Error())

	var list strictyaml.ErrorList
	require.True(t, errors.As(err, &list), "error reads as a strictyaml.ErrorList")
	assert.Equal(t, err.Error(), list.Error())
	assert.Len(t, list, 2)

	_, err = NewRenderer(testClusters).RenderAll(NewRepo(os.DirFS("testdata/repos/hash-a")), pipelines[:1])
	assert.NoError(t, err, "no error is a nil error, not an empty list")
}

func TestNamesIn(t *testing.T) {
	tests := []struct {
		name, file string
		want       []string
	}{
		{"valid", "apiVersion: ebb.dev/v1alpha1\nkind: Pipeline\nmetadata:\n  name: web\n", []string{"web"}},
		{"flow style", "apiVersion: ebb.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: web, labels: {a: b}}\n", []string{"web"}},
		{"unknown fields still name it", "apiVersion: ebb.dev/v1alpha1\nkind: Pipeline\nmetadata:\n  name: web\nspec:\n  strategy: fast\n", []string{"web"}},
		{"syntax error: found by pattern", "apiVersion: ebb.dev/v1alpha1\nkind: Pipeline\nmetadata:\n  labels: {team: a}\n  name: \"web\"\nspec:\n  stages:\n  - name: dev\n   namespace: x\n", []string{"web"}},
		{"flow syntax error", "apiVersion: ebb.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: web}\nspec: [\n", []string{"web"}},
		{"two documents, config skipped", "apiVersion: ebb.dev/v1alpha1\nkind: Config\nmetadata: {name: cfg}\n---\napiVersion: ebb.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: api}\n---\nkind: Pipeline\nmetadata:\n  name: web\n", []string{"api", "web"}},
		{"no name", "apiVersion: ebb.dev/v1alpha1\nkind: Pipeline\nspec: {}\n", nil},
		{"no metadata and broken", "apiVersion: ebb.dev/v1alpha1\nkind: Pipeline\n  spec: : [\n", nil},
		{"byte-order mark", "\xef\xbb\xbfapiVersion: ebb.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: web}\n", []string{"web"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, NamesIn([]byte(tt.file)))
		})
	}
}

// TestNamesInMalformedFixtures checks that every malformed fixture still names its pipeline,
// whatever is wrong with it.
func TestNamesInMalformedFixtures(t *testing.T) {
	entries, err := os.ReadDir("testdata/malformed")
	require.NoError(t, err)
	for _, e := range entries {
		data, err := os.ReadFile("testdata/malformed/" + e.Name())
		require.NoError(t, err)
		assert.NotEmpty(t, NamesIn(data), e.Name())
	}
}
