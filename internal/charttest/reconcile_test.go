package charttest

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/reconciler"
)

// TestReconcileThroughTheAPIServer: with polling an hour apart and no webhook call, a pushed
// commit is released only because `ebb reconcile` asked for it, through the Pipeline object;
// the daemon handles the request with nothing but the chart's RBAC. Its standard error, klog's
// lines from client-go included, is one JSON object a line.
func TestReconcileThroughTheAPIServer(t *testing.T) {
	const release, ns = "ebb-rec", "ebb-rec"
	in := installChart(t, release, ns, nil, "git.interval=1h")
	d := in.startDaemon()
	stage := [3]string{"dev", "local", "rec-dev"}
	first := in.commit(d, "release 1.0", pipelineFiles("rec", "1.0", false, stage))
	in.waitExecution("rec", first, reconciler.Completed)

	second, err := in.repo.CommitAndPush("release 2.0, pushed without a webhook", pipelineFiles("rec", "2.0", false, stage))
	require.NoError(t, err)
	cmd := exec.Command(ebbBin, "reconcile", "rec", "--kubeconfig", dev.Kubeconfig, "-n", ns, "--timeout", "60s")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "asked the daemon to reconcile pipeline rec")
	assert.Contains(t, string(out), "reconciled pipeline rec at commit")
	in.waitExecution("rec", second, reconciler.Completed)
	assert.Equal(t, "registry.example/rec:2.0", image(t, in, "rec-dev"))
	d.WaitLog(10*time.Second, "msg", "reconcile request handled", "pipeline", "rec")

	// The drift check the request runs first tries cluster-wide metadata watches, which the
	// chart does not grant (client-go logs the refusal), then watches per namespace
	// (internal/ssa). Every other request is allowed, the Pipeline watch and patch included.
	for _, line := range d.Lines("forbidden") {
		assert.Contains(t, line, `"component":"client-go"`, "only client-go's refused cluster-wide watch: %s", line)
		assert.NotContains(t, line, "pipelines", "the chart's RBAC allows watching and patching Pipeline objects")
	}
	lines := d.Lines("")
	require.NotEmpty(t, lines)
	fromClientGo := 0
	for _, line := range lines {
		var entry map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &entry), "every line of the daemon's stderr is JSON: %q", line)
		if entry["component"] == "client-go" {
			fromClientGo++
		}
	}
	assert.Positive(t, fromClientGo, "klog's lines (leader election) reach the JSON log: %s", strings.Join(lines[:min(len(lines), 5)], "\n"))
}
