package planner

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestRenderCachePlainDirectory: a plain YAML directory of several files, unchanged, is
// rendered once. The in-memory filesystem lists a directory in map order, a different one
// from one listing to the next; the cache must not take that for a change.
func TestRenderCachePlainDirectory(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{"pipelines/p.yaml": pipelineOf("good", "app"), "app/deployment.yaml": deploymentYAML}
	for _, name := range []string{"a", "b", "c", "d", "e", "f"} {
		files["app/"+name+".yaml"] = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: " + name + "}\n"
	}
	writeTree(t, dir, files)
	r := NewRenderer(testClusters)
	for range 10 {
		renderStage(t, r, dir, "dev")
	}
	assert.Equal(t, RenderStats{Rendered: 1, Reused: 9}, r.Stats())
}
