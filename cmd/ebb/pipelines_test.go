package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

// pipelineObjects are a pipeline in sync and an invalid one, as the daemon writes them.
func pipelineObjects(store *reconciler.Store, now time.Time) []*reconciler.Pipeline {
	web := store.NewPipeline("web")
	web.Spec.File, web.Spec.Enabled = "pipelines/web.yaml", true
	web.CreationTimestamp = metav1.NewTime(now.Add(-2 * time.Hour))
	web.Status.LastPlannedCommit = reconciler.NewCommitRef("0123456789abcdef", metav1.NewTime(now))
	web.Status.Stages = []reconciler.PipelineStage{{Name: "dev", Cluster: "dev", Namespace: "web-dev",
		Current: &reconciler.ReleaseRecord{Commit: "0123456789abcdef", ShortCommit: "0123456", Hash: "sha256:a", Execution: "web#1"}}}
	reconciler.Conditions{Ready: *reconciler.NewCondition(true, "Succeeded", "in sync at commit 0123456: stages dev run the release planned at it")}.
		Apply(&web.Status.Conditions, 1)

	api := store.NewPipeline("api")
	api.Spec.File, api.Spec.Enabled = "pipelines/api.yaml", false
	api.CreationTimestamp = metav1.NewTime(now.Add(-90 * time.Second))
	api.Status.LastPlannedCommit = reconciler.NewCommitRef("0123456789abcdef", metav1.NewTime(now))
	msg := `pipelines/api.yaml:19:3: unknown field "strategy" in spec; pipelines/api.yaml:21:5: unknown field "replicas" in spec.stages[0]`
	reconciler.Conditions{Ready: *reconciler.NewCondition(false, "InvalidPipeline", msg), Stalled: reconciler.NewCondition(true, "InvalidPipeline", msg)}.
		Apply(&api.Status.Conditions, 1)
	return []*reconciler.Pipeline{api, web}
}

func TestPrintPipelines(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	var list []reconciler.Pipeline
	for _, p := range pipelineObjects(reconciler.NewStore(nil, "ebb-system"), now) {
		list = append(list, *p)
	}
	list = append(list, reconciler.Pipeline{Spec: reconciler.PipelineSpec{Pipeline: "new"}, ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(now)}})

	var out bytes.Buffer
	printPipelines(&out, list, false, now)
	assert.Equal(t, ""+
		"NAME  READY  STATUS           COMMIT   AGE   MESSAGE\n"+
		"api   False  InvalidPipeline  0123456  90s   pipelines/api.yaml:19:3: unknown field \"strategy\" in spec; pipelines/api.yaml:21:5: unknown field...\n"+
		"web   True   Succeeded        0123456  120m  in sync at commit 0123456: stages dev run the release planned at it\n"+
		"new   -      -                -        0s    \n",
		out.String())

	out.Reset()
	printPipelines(&out, list[:1], true, now)
	assert.Equal(t, ""+
		"NAME  READY  STATUS           COMMIT   AGE  MESSAGE                                                                                                                         FILE                ENABLED\n"+
		"api   False  InvalidPipeline  0123456  90s  pipelines/api.yaml:19:3: unknown field \"strategy\" in spec; pipelines/api.yaml:21:5: unknown field \"replicas\" in spec.stages[0]  pipelines/api.yaml  false\n",
		out.String())
}

// TestPipelinesCommand lists Pipeline objects from the real API server.
func TestPipelinesCommand(t *testing.T) {
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(cluster.Config)
	top, err := testcluster.ModuleRoot()
	require.NoError(t, err)
	require.NoError(t, reconciler.InstallCRDs(ctx, dyn, filepath.Join(top, "charts", "ebb", "crds")))
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-pipelines-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}) })
	store := reconciler.NewStore(dyn, ns.Name)
	for _, p := range pipelineObjects(store, time.Now()) {
		_, err := store.SavePipeline(ctx, p, nil)
		require.NoError(t, err)
	}

	code, stdout, stderr := ebb(t, "pipelines", "--kubeconfig", cluster.Kubeconfig, "-n", ns.Name)
	require.Equal(t, 0, code, stderr)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	require.Len(t, lines, 3, stdout)
	assert.Equal(t, []string{"NAME", "READY", "STATUS", "COMMIT", "AGE", "MESSAGE"}, strings.Fields(lines[0]))
	assert.Equal(t, []string{"api", "False", "InvalidPipeline", "0123456"}, strings.Fields(lines[1])[:4])
	assert.Contains(t, lines[1], `pipelines/api.yaml:19:3: unknown field "strategy" in spec`)
	assert.Equal(t, []string{"web", "True", "Succeeded", "0123456"}, strings.Fields(lines[2])[:4])

	code, stdout, stderr = ebb(t, "pipelines", "--kubeconfig", cluster.Kubeconfig, "-n", ns.Name, "-o", "json")
	require.Equal(t, 0, code, stderr)
	var list struct {
		Kind  string                `json:"kind"`
		Items []reconciler.Pipeline `json:"items"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &list))
	assert.Equal(t, "List", list.Kind)
	require.Len(t, list.Items, 2)
	assert.Equal(t, "web", list.Items[1].Spec.Pipeline)
	require.Len(t, list.Items[1].Status.Stages, 1)
	assert.Equal(t, "web#1", list.Items[1].Status.Stages[0].Current.Execution)

	code, stdout, stderr = ebb(t, "pipelines", "--kubeconfig", cluster.Kubeconfig, "-n", ns.Name, "-o", "yaml")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "reason: InvalidPipeline")
	assert.Contains(t, stdout, "file: pipelines/api.yaml")

	code, _, stderr = ebb(t, "pipelines", "--kubeconfig", cluster.Kubeconfig, "-o", "table")
	assert.Equal(t, 2, code, "bad usage")
	assert.Contains(t, stderr, `--output "table"`)
}
