package main

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/reconciler"
)

// execution is a rolled-back execution as the reconciler records it.
func execution(now time.Time) reconciler.Execution {
	at := func(d time.Duration) *metav1.Time { t := metav1.NewTime(now.Add(d)); return &t }
	x := reconciler.Execution{
		ObjectMeta: metav1.ObjectMeta{Name: "web-2", CreationTimestamp: metav1.NewTime(now.Add(-90 * time.Second))},
		Spec: reconciler.ExecutionSpec{DisplayName: "web#2", Pipeline: "web", Number: 2, Kind: reconciler.KindDeploy,
			Commit: "0123456789abcdef", ShortCommit: "0123456", CommitMessage: "release 2.0"},
		Status: reconciler.ExecutionStatus{
			Phase: reconciler.RollbackCompleted, Stage: "dev", Image: "registry.example/web:2.0",
			Comment:  `stage dev, task "Verify deployment" failed at commit 0123456: rollout: ProgressDeadlineExceeded`,
			Rollback: "web-dev-rollback-1", StartedAt: at(-90 * time.Second), FinishedAt: at(-60 * time.Second),
			Stages: []reconciler.StageRecord{{
				Name: "dev", Status: reconciler.Failed, StartedAt: at(-89 * time.Second), FinishedAt: at(-61 * time.Second),
				Tasks: []reconciler.TaskRecord{
					{Name: reconciler.TaskCreateResources, Status: reconciler.Completed, StartedAt: at(-89 * time.Second), FinishedAt: at(-88 * time.Second)},
					{Name: reconciler.TaskVerifyDeployment, Status: reconciler.Failed, StartedAt: at(-88 * time.Second), FinishedAt: at(-61 * time.Second), Message: "rollout: ProgressDeadlineExceeded"},
				},
			}},
		},
	}
	return x
}

func TestPrintExecutions(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	var out bytes.Buffer
	printExecutions(&out, []reconciler.Execution{execution(now)}, false, now)
	assert.Equal(t, ""+
		"NAME   PIPELINE  STATUS              STAGE  COMMIT   IMAGE                     AGE  COMMENT\n"+
		"web#2  web       ROLLBACK_COMPLETED  dev    0123456  registry.example/web:2.0  90s  stage dev, task \"Verify deployment\" failed at commit 0123456: rollout: ProgressDeadlineExceeded\n",
		out.String())
}

func TestPrintExecutionTree(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	x := execution(now)
	var out bytes.Buffer
	printExecutionTree(&out, &x, now)
	assert.Equal(t, ""+
		"web#2  ROLLBACK_COMPLETED\n"+
		"  pipeline:  web\n"+
		"  kind:      Deploy\n"+
		"  commit:    0123456 release 2.0\n"+
		"  image:     registry.example/web:2.0\n"+
		"  duration:  30s\n"+
		"  rollback:  web-dev-rollback-1\n"+
		"  comment:   stage dev, task \"Verify deployment\" failed at commit 0123456: rollout: ProgressDeadlineExceeded\n"+
		"└─ stage dev  FAILED  28s\n"+
		"   ├─ Create namespace/secret/service  COMPLETED  1s\n"+
		"   └─ Verify deployment  FAILED  27s  rollout: ProgressDeadlineExceeded\n",
		out.String())
}

// TestPrintExecutionsRedactsURLs checks that a URL with a token in a record, as a record
// written before URLs were redacted where they are made may hold, is shown redacted in every
// output format.
func TestPrintExecutionsRedactsURLs(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	x := execution(now)
	x.Status.Comment = `stage dev failed: healthCheck: http://web.dev/healthz?token=hunter2 failed 3 times in a row`
	x.Status.Stages[0].Tasks[1].Message = `healthCheck: http://ebb:hunter2@web.dev/healthz failed 3 times in a row`
	var table, wide, tree, yamlOut, jsonOut bytes.Buffer
	printExecutions(&table, []reconciler.Execution{x}, false, now)
	printExecutions(&wide, []reconciler.Execution{x}, true, now)
	printExecutionTree(&tree, &x, now)
	assert.NoError(t, printAs(t, "yaml", &yamlOut, &x))
	assert.NoError(t, printAs(t, "json", &jsonOut, &x))
	var jsonpath bytes.Buffer
	assert.NoError(t, printAs(t, "jsonpath={.status.comment}", &jsonpath, &x))
	for name, out := range map[string]string{"table": table.String(), "wide": wide.String(), "tree": tree.String(), "yaml": yamlOut.String(), "json": jsonOut.String(), "jsonpath": jsonpath.String()} {
		assert.NotContains(t, out, "hunter2", name)
		assert.Contains(t, out, "http://web.dev/healthz?token=***", name)
	}
	assert.Contains(t, tree.String(), "http://***@web.dev/healthz failed")
}

// printAs prints x as `ebb execution -o format` does.
func printAs(t *testing.T, format string, w io.Writer, x *reconciler.Execution) error {
	t.Helper()
	var o outputFlags
	cmd := &cobra.Command{}
	o.add(cmd)
	require.NoError(t, cmd.Flags().Set("output", format))
	require.NoError(t, o.validate())
	return o.printObjects(w, "Execution", false, x)
}
