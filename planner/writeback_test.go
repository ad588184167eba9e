package planner

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWriteBack checks spec.writeBack: off by default, each mode, and a located error for a
// bad or missing mode.
func TestWriteBack(t *testing.T) {
	pipeline := func(writeBack string) []byte {
		return []byte(`apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: web}
spec:
  manifests: app
  service: web
  stages:
  - {name: dev, cluster: dev, namespace: web-dev}
` + writeBack)
	}
	ps, err := ParseFile("web.yaml", pipeline(""), testClusters)
	require.NoError(t, err)
	assert.Nil(t, ps[0].Spec.WriteBack, "off by default")
	for _, mode := range []string{WriteBackCommit, WriteBackBranch} {
		ps, err := ParseFile("web.yaml", pipeline("  writeBack: {mode: "+mode+"}\n"), testClusters)
		require.NoError(t, err)
		assert.Equal(t, &WriteBack{Mode: mode}, ps[0].Spec.WriteBack)
	}
	for _, tc := range []struct{ writeBack, want string }{
		{"  writeBack: {mode: revert}\n", `web.yaml:9:21: bad write-back mode "revert": want "commit" (push to the followed branch) or "branch" (push a branch for review)`},
		{"  writeBack: {}\n", `web.yaml:9:14: missing required field "mode" in spec.writeBack: "commit" or "branch"`},
		{"  writeBack: {mode: commit, to: main}\n", `web.yaml:9:29: unknown field "to" in spec.writeBack`},
	} {
		_, err := ParseFile("web.yaml", pipeline(tc.writeBack), testClusters)
		require.Error(t, err, tc.writeBack)
		assert.Equal(t, tc.want, err.Error())
	}
}
