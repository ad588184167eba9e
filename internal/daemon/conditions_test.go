package daemon

import (
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/planner/strictyaml"
	"ebb.dev/ebb/reconciler"
)

// TestPipelineConditions decides the conditions of one enabled pipeline with one stage, dev,
// planned at commit bbbbbbb to run release "new", from its newest execution and its ledger.
func TestPipelineConditions(t *testing.T) {
	old := &reconciler.ReleaseRecord{Commit: "aaaaaaaaaa", ShortCommit: "aaaaaaa", Hash: "old", Execution: "web#1"}
	current := &reconciler.ReleaseRecord{Commit: "bbbbbbbbbb", ShortCommit: "bbbbbbb", Hash: "new", Execution: "web#2"}
	failed := reconciler.ReleaseRecord{Commit: "bbbbbbbbbb", ShortCommit: "bbbbbbb", Hash: "new", Execution: "web#2", Reason: "rollout failed"}
	execution := func(commit string, phase reconciler.Status, failure reconciler.FailureClass) *reconciler.Execution {
		x := &reconciler.Execution{Spec: reconciler.ExecutionSpec{DisplayName: "web#2", Pipeline: "web", Number: 2, Kind: reconciler.KindDeploy, Commit: commit}}
		x.Status = reconciler.ExecutionStatus{Phase: phase, Failure: failure, Comment: "the comment", Stage: "dev"}
		return x
	}
	type want struct {
		ready             bool
		reason            string
		reconciling       bool
		stalled           bool
		messageContaining string
	}
	tests := []struct {
		name    string
		ledger  reconciler.PipelineStage
		newest  *reconciler.Execution
		git     func(*gitPipeline)
		removed bool
		want    want
	}{
		{name: "in sync", ledger: reconciler.PipelineStage{Current: current},
			newest: execution("bbbbbbbbbb", reconciler.Completed, ""),
			want:   want{ready: true, reason: "Succeeded", messageContaining: "in sync at commit bbbbbbb"}},
		{name: "in sync through an older commit of the same release", ledger: reconciler.PipelineStage{Current: current},
			newest: execution("0000000000", reconciler.Completed, ""),
			want:   want{ready: true, reason: "Succeeded"}},
		{name: "running", ledger: reconciler.PipelineStage{Current: old}, newest: execution("bbbbbbbbbb", reconciler.Running, ""),
			want: want{reason: "Running", reconciling: true, messageContaining: "web#2 RUNNING: the comment"}},
		{name: "rolling back", ledger: reconciler.PipelineStage{Current: old}, newest: execution("bbbbbbbbbb", reconciler.RollingBack, reconciler.FailureVerification),
			want: want{reason: "RollingBack", reconciling: true}},
		{name: "waiting for approval", ledger: reconciler.PipelineStage{Current: old}, newest: execution("bbbbbbbbbb", reconciler.Waiting, ""),
			want: want{reason: "Waiting", reconciling: true}},
		{name: "waiting for its cluster", ledger: reconciler.PipelineStage{Current: old}, newest: execution("bbbbbbbbbb", reconciler.Waiting, reconciler.FailureWaiting),
			want: want{reason: "WaitingForCluster", reconciling: true, messageContaining: "the comment"}},
		{name: "a running execution wins over in sync", ledger: reconciler.PipelineStage{Current: current}, newest: execution("bbbbbbbbbb", reconciler.Running, ""),
			want: want{reason: "Running", reconciling: true}},
		{name: "failed: the release is wrong", ledger: reconciler.PipelineStage{Current: old}, newest: execution("bbbbbbbbbb", reconciler.Failed, reconciler.FailureStalled),
			want: want{reason: "Failed", stalled: true, messageContaining: "web#2 FAILED: the comment"}},
		{name: "rolled back", ledger: reconciler.PipelineStage{Current: old, Quarantined: []reconciler.ReleaseRecord{failed}},
			newest: execution("bbbbbbbbbb", reconciler.RollbackCompleted, reconciler.FailureVerification),
			want:   want{reason: "RollbackCompleted", messageContaining: "web#2 ROLLBACK_COMPLETED"}},
		{name: "quarantined, its execution not the newest of this release", ledger: reconciler.PipelineStage{Current: old, Quarantined: []reconciler.ReleaseRecord{failed}},
			want: want{reason: "ReleaseQuarantined", messageContaining: "failed in web#2 (rollout failed) and is quarantined"}},
		{name: "a new release, not started yet", ledger: reconciler.PipelineStage{Current: old},
			newest: execution("aaaaaaaaaa", reconciler.Failed, reconciler.FailureStalled),
			want:   want{reason: "Progressing", reconciling: true, messageContaining: "commit bbbbbbb is to be deployed to stages dev"}},
		{name: "first deploy", want: want{reason: "Progressing", reconciling: true}},
		{name: "not enabled", git: func(gp *gitPipeline) { gp.planned = nil }, want: want{reason: "NotEnabled", messageContaining: "planned only"}},
		{name: "invalid", ledger: reconciler.PipelineStage{Current: old}, newest: execution("aaaaaaaaaa", reconciler.Completed, ""),
			git: func(gp *gitPipeline) {
				gp.planned, gp.reason = nil, reasonInvalid
				gp.errs = strictyaml.ErrorList{{File: "pipelines/web.yaml", Pos: strictyaml.Pos{Line: 9, Col: 5}, Msg: `unknown field "strategy"`}}
			},
			want: want{reason: "InvalidPipeline", stalled: true, messageContaining: `pipelines/web.yaml:9:5: unknown field "strategy"; not planned at commit bbbbbbb`}},
		{name: "removed", ledger: reconciler.PipelineStage{Current: old}, removed: true,
			want: want{reason: "RemovedFromGit", messageContaining: "removed from Git at commit ccccccc"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gp := &gitPipeline{name: "web", file: "pipelines/web.yaml", planned: map[string]string{"dev": "new"}}
			if tt.git != nil {
				tt.git(gp)
			}
			stage := tt.ledger
			stage.Name, stage.Cluster, stage.Namespace = "dev", "dev", "web-dev"
			f := pipelineFacts{name: "web", file: gp.file, enabled: tt.name != "not enabled", commit: "bbbbbbbbbb", git: gp,
				stages: []reconciler.PipelineStage{stage}, newest: tt.newest}
			if tt.removed {
				f.git, f.removed = nil, &reconciler.CommitRef{SHA: "cccccccccc", ShortSHA: "ccccccc"}
			}
			c := f.conditions()
			assert.Equal(t, tt.want.ready, c.Ready.Status == "True", "Ready")
			assert.Equal(t, tt.want.reason, c.Ready.Reason)
			assert.Contains(t, c.Ready.Message, tt.want.messageContaining)
			if assert.Equal(t, tt.want.reconciling, c.Reconciling != nil, "Reconciling") && c.Reconciling != nil {
				assert.Equal(t, "True", string(c.Reconciling.Status))
				assert.Equal(t, c.Ready.Reason, c.Reconciling.Reason)
			}
			if assert.Equal(t, tt.want.stalled, c.Stalled != nil, "Stalled") && c.Stalled != nil {
				assert.Equal(t, "True", string(c.Stalled.Status))
				assert.Equal(t, c.Ready.Message, c.Stalled.Message)
			}
		})
	}
}

// TestGitViewNamesBrokenFiles checks how the errors of files that do not load are put on
// pipelines: by metadata.name when it can be read (every pipeline of a file gets the file's
// errors), else by the file's base name.
func TestGitViewNamesBrokenFiles(t *testing.T) {
	v := &gitView{pipelines: map[string]*gitPipeline{}}
	fsys := fstest.MapFS{
		"pipelines/two.yaml": {Data: []byte("apiVersion: ebb.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: Api_v2}\n---\napiVersion: ebb.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: worker}\nspec: [\n")},
		"pipelines/junk.yml": {Data: []byte("apiVersion: ebb.dev/v1alpha1\n: [\n")},
	}
	errs := strictyaml.ErrorList{
		{File: "pipelines/two.yaml", Pos: strictyaml.Pos{Line: 8, Col: 7}, Msg: "invalid YAML"},
		{File: "pipelines/junk.yml", Pos: strictyaml.Pos{Line: 2, Col: 1}, Msg: "invalid YAML"},
	}
	v.addLoadErrors(fsys, errs)
	require.Len(t, v.pipelines, 3)
	for _, key := range []string{"api-v2", "worker"} {
		gp := v.pipelines[key]
		require.NotNil(t, gp, key)
		assert.False(t, gp.derived)
		assert.Equal(t, "pipelines/two.yaml", gp.file)
		assert.Equal(t, reasonInvalid, gp.reason)
		assert.Equal(t, "pipelines/two.yaml:8:7: invalid YAML", gp.errs.Error())
	}
	assert.Equal(t, "Api_v2", v.pipelines["api-v2"].name)
	junk := v.pipelines["junk"]
	require.NotNil(t, junk)
	assert.True(t, junk.derived)
	assert.Nil(t, junk.enabled, "what the file says is unknown")
}
