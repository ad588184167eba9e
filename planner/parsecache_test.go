package planner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestParseCacheKeepsUnchangedFiles loads a repository three times with one ParseCache: a
// file unchanged since the last Load gives the very pipeline it gave then, a changed file is
// parsed again, a file with errors reports them every time, a removed file is forgotten, and
// other Options parse again (a cluster the new options do not know is an error).
func TestParseCacheKeepsUnchangedFiles(t *testing.T) {
	deployment, err := os.ReadFile("testdata/repos/mixed/app/deployment.yaml")
	require.NoError(t, err)
	root := t.TempDir()
	write := func(name, content string) {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(root, name)), 0o700))
		require.NoError(t, os.WriteFile(filepath.Join(root, name), []byte(content), 0o600))
	}
	write("app/deployment.yaml", string(deployment))
	write("pipelines/web.yaml", pipelineYAML("web", "web-dev"))
	write("pipelines/api.yaml", pipelineYAML("api", "api-dev"))
	write("pipelines/bad.yaml", strings.Replace(pipelineYAML("bad", "bad-dev"), "service: web", "service: web\n  colour: blue", 1))

	cache := &ParseCache{}
	opts := testClusters
	opts.Parsed = cache
	load := func(opts Options) (map[string]*Pipeline, error) {
		pipelines, err := Load(NewRepo(os.DirFS(root)), opts)
		byName := map[string]*Pipeline{}
		for _, p := range pipelines {
			byName[p.Metadata.Name] = p
		}
		return byName, err
	}
	first, err := load(opts)
	require.ErrorContains(t, err, `pipelines/bad.yaml:8:3: unknown field "colour" in spec`)
	require.Len(t, first, 2)

	write("pipelines/api.yaml", pipelineYAML("api", "api-elsewhere"))
	require.NoError(t, os.Remove(filepath.Join(root, "pipelines/bad.yaml")))
	second, err := load(opts)
	require.NoError(t, err, "the removed file's errors are gone")
	assert.Same(t, first["web"], second["web"], "an unchanged file is not parsed again")
	assert.NotSame(t, first["api"], second["api"])
	assert.Equal(t, "api-elsewhere", second["api"].Spec.Stages[0].Namespace, "a changed file is parsed again")
	assert.Len(t, cache.files, 2, "the removed file is forgotten")

	// The same cache with options that know no cluster "dev": every file is parsed again.
	other := Options{Clusters: []string{"prod"}, Parsed: cache}
	third, err := load(other)
	require.ErrorContains(t, err, `unknown cluster "dev"`)
	assert.Empty(t, third)
}
