package reconciler

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/internal/testcluster"
)

// TestSavePipelineWritesOnlyChanges saves a Pipeline object, saves it again unchanged (no
// write), changes its status (a status write) and its spec (a new generation, observed).
func TestSavePipelineWritesOnlyChanges(t *testing.T) {
	store, _ := newRecords(t)
	ctx := context.Background()
	want := store.NewPipeline("Web_App")
	want.Spec.File, want.Spec.Enabled = "pipelines/web.yaml", true
	want.Status.LastPlannedCommit = NewCommitRef("0123456789abcdef", metav1.NewTime(time.Now().Truncate(time.Second)))
	want.Status.Stages = []PipelineStage{{Name: "dev", Cluster: "dev", Namespace: "web-dev",
		Current: &ReleaseRecord{Commit: "0123456789abcdef", ShortCommit: "0123456", Hash: "sha256:a", Execution: "Web_App#1"}}}
	Conditions{Ready: *NewCondition(true, "Succeeded", "commit 0123456 runs in every stage")}.Apply(&want.Status.Conditions, 0)

	stored, err := store.SavePipeline(ctx, want, nil)
	require.NoError(t, err)
	assert.Equal(t, "web-app", stored.Name, "the DNS-safe form of the pipeline's name")
	assert.Equal(t, "Web_App", stored.Labels[LabelPipeline])
	assert.Equal(t, want.Spec, stored.Spec)
	assert.EqualValues(t, 1, stored.Status.ObservedGeneration)
	assert.Equal(t, want.Status.Stages, stored.Status.Stages)
	assert.Equal(t, "0123456", stored.Status.LastPlannedCommit.ShortSHA)

	again, err := store.SavePipeline(ctx, want, stored)
	require.NoError(t, err)
	assert.Equal(t, stored.ResourceVersion, again.ResourceVersion, "nothing changed: nothing written")

	next := again.DeepCopy()
	Conditions{Ready: *NewCondition(false, "Progressing", "web#2 RUNNING"), Reconciling: NewCondition(true, "Progressing", "web#2 RUNNING")}.Apply(&next.Status.Conditions, next.Generation)
	saved, err := store.SavePipeline(ctx, next, again)
	require.NoError(t, err)
	assert.NotEqual(t, again.ResourceVersion, saved.ResourceVersion)
	assert.Equal(t, again.Generation, saved.Generation, "a status write is not a new generation")
	assert.Len(t, saved.Status.Conditions, 2)

	next = saved.DeepCopy()
	next.Spec.Enabled = false
	saved2, err := store.SavePipeline(ctx, next, saved)
	require.NoError(t, err)
	assert.False(t, saved2.Spec.Enabled)
	assert.EqualValues(t, 2, saved2.Generation)
	assert.EqualValues(t, 2, saved2.Status.ObservedGeneration)
	for _, c := range saved2.Status.Conditions {
		assert.EqualValues(t, 2, c.ObservedGeneration, c.Type)
	}

	list, err := store.ListPipelines(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, saved2.ResourceVersion, list[0].ResourceVersion)
}

// TestKubectlGetPipelines checks the columns kubectl prints for Pipeline objects.
func TestKubectlGetPipelines(t *testing.T) {
	store, ns := newRecords(t)
	ctx := context.Background()
	kubectl, err := testcluster.Bin("kubectl")
	require.NoError(t, err)
	now := metav1.NewTime(time.Now().Truncate(time.Second))

	good := store.NewPipeline("web")
	good.Spec.File, good.Spec.Enabled = "pipelines/web.yaml", true
	good.Status.LastPlannedCommit = NewCommitRef("0123456789abcdef", now)
	Conditions{Ready: *NewCondition(true, "Succeeded", "commit 0123456 runs in stages dev, prod")}.Apply(&good.Status.Conditions, 0)
	_, err = store.SavePipeline(ctx, good, nil)
	require.NoError(t, err)

	bad := store.NewPipeline("api")
	bad.Spec.File, bad.Spec.Enabled = "pipelines/api.yaml", true
	bad.Status.LastPlannedCommit = NewCommitRef("0123456789abcdef", now)
	msg := `pipelines/api.yaml:9:5: unknown field "strategy"`
	Conditions{Ready: *NewCondition(false, "InvalidPipeline", msg), Stalled: NewCondition(true, "InvalidPipeline", msg)}.Apply(&bad.Status.Conditions, 0)
	_, err = store.SavePipeline(ctx, bad, nil)
	require.NoError(t, err)

	get := func(args ...string) []string {
		out, err := exec.Command(kubectl, append([]string{"--kubeconfig", cluster.Kubeconfig, "-n", ns, "get"}, args...)...).CombinedOutput()
		require.NoError(t, err, string(out))
		return strings.Split(strings.TrimSpace(string(out)), "\n")
	}
	lines := get("pipelines")
	require.Len(t, lines, 3)
	assert.Equal(t, []string{"NAME", "READY", "STATUS", "COMMIT", "AGE", "MESSAGE"}, strings.Fields(lines[0]))
	assert.Equal(t, []string{"api", "False", "InvalidPipeline", "0123456"}, strings.Fields(lines[1])[:4])
	assert.True(t, strings.HasSuffix(lines[1], msg), lines[1])
	assert.Equal(t, []string{"web", "True", "Succeeded", "0123456"}, strings.Fields(lines[2])[:4])
	assert.True(t, strings.HasSuffix(lines[2], "commit 0123456 runs in stages dev, prod"), lines[2])

	wide := get("pipelines", "-o", "wide")
	assert.Equal(t, []string{"NAME", "READY", "STATUS", "COMMIT", "AGE", "MESSAGE", "FILE", "ENABLED"}, strings.Fields(wide[0]))
	assert.True(t, strings.HasSuffix(wide[2], "pipelines/web.yaml   true"), wide[2])

	// The short name and the ebb category reach it too.
	assert.Len(t, get("ebbp"), 3)
	assert.Contains(t, strings.Join(get("ebb"), "\n"), "pipeline.ebb.dev/web")
}
