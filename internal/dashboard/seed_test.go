package dashboard

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"ebb.dev/ebb/reconciler"
)

const (
	goodCommit = "1111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	badCommit  = "2222222bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// records are the records a reconciler writes for pipeline web: web#1 verified in dev and
// prod, web#2 failed verification in dev and was rolled back by web_dev_rollback#1, and
// pipeline api's api#1, waiting for approval of prod.
type records struct {
	store                *reconciler.Store
	good, bad, rollback  *reconciler.Execution
	waiting              *reconciler.Execution
	approval             *reconciler.Approval
	base                 time.Time
	failedAt, restoredAt time.Time
}

func seed(t testing.TB, ns string) *records {
	t.Helper()
	ctx := context.Background()
	store := reconciler.NewStore(dynamic.NewForConfigOrDie(cluster.Config), ns)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	r := &records{store: store, base: base}
	tasks := func(from time.Duration, last reconciler.Status, msg string) []reconciler.TaskRecord {
		return []reconciler.TaskRecord{
			{Name: reconciler.TaskCreateResources, Status: reconciler.Completed, StartedAt: at(base, from), FinishedAt: at(base, from+time.Second)},
			{Name: reconciler.TaskUpdateDeployment, Status: reconciler.Completed, StartedAt: at(base, from+time.Second), FinishedAt: at(base, from+2*time.Second)},
			{Name: reconciler.TaskVerifyDeployment, Status: last, StartedAt: at(base, from+2*time.Second), FinishedAt: at(base, from+10*time.Second), Message: msg},
		}
	}
	create := func(x *reconciler.Execution) *reconciler.Execution {
		stored, err := store.CreateExecution(ctx, x)
		require.NoError(t, err)
		return stored
	}
	r.good = create(&reconciler.Execution{
		Spec: reconciler.ExecutionSpec{Pipeline: "web", Kind: reconciler.KindDeploy, Commit: goodCommit, CommitMessage: "web 1.0\n\nthe first release"},
		Status: reconciler.ExecutionStatus{Phase: reconciler.Completed, Stage: "prod", Image: "registry.example/web:1.0",
			StartedAt: at(base, 0), FinishedAt: at(base, 25*time.Second),
			Stages: []reconciler.StageRecord{
				{Name: "dev", Status: reconciler.Completed, Images: []string{"registry.example/web:1.0"}, StartedAt: at(base, 0), FinishedAt: at(base, 10*time.Second), Tasks: tasks(0, reconciler.Completed, "")},
				{Name: "prod", Status: reconciler.Completed, Images: []string{"registry.example/web:1.0"}, StartedAt: at(base, 12*time.Second), FinishedAt: at(base, 22*time.Second), Tasks: tasks(12*time.Second, reconciler.Completed, "")},
			},
			History: []reconciler.PhaseChange{
				{Seq: 1, Phase: reconciler.Running, Stage: "dev", At: *at(base, 0)},
				{Seq: 2, Phase: reconciler.Completed, Stage: "prod", At: *at(base, 25*time.Second)},
			}},
	})
	trigger := `stage dev, task "Verify deployment" failed at commit 2222222: rollout: ProgressDeadlineExceeded (health http://web.dev/healthz?token=hunter2); rolling back to commit 1111111 (image registry.example/web:1.0)`
	b := 10 * time.Minute
	r.failedAt = base.Add(b + 10*time.Second)
	r.bad = create(&reconciler.Execution{
		Spec: reconciler.ExecutionSpec{Pipeline: "web", Kind: reconciler.KindDeploy, Commit: badCommit, CommitMessage: "web 2.0-broken"},
		Status: reconciler.ExecutionStatus{Phase: reconciler.RollingBack, Stage: "dev", Image: "registry.example/web:2.0-broken", Comment: trigger,
			StartedAt: at(base, b),
			Stages: []reconciler.StageRecord{
				{Name: "dev", Status: reconciler.Failed, StartedAt: at(base, b), FinishedAt: at(base, b+10*time.Second), Tasks: tasks(b, reconciler.Failed, "rollout: ProgressDeadlineExceeded")},
			}},
	})
	r.restoredAt = base.Add(b + 14*time.Second)
	r.rollback = create(&reconciler.Execution{
		Spec: reconciler.ExecutionSpec{Pipeline: "web", Kind: reconciler.KindRollback, Stage: "dev", Parent: r.bad.Name, Commit: goodCommit, CommitMessage: "rollback of web#2"},
		Status: reconciler.ExecutionStatus{Phase: reconciler.Completed, Stage: "dev", Image: "registry.example/web:1.0", Comment: "rollback of web#2: " + trigger,
			StartedAt: at(base, b+10*time.Second), FinishedAt: at(base, b+14*time.Second),
			Stages: []reconciler.StageRecord{{Name: "dev", Status: reconciler.Completed, StartedAt: at(base, b+10*time.Second), FinishedAt: at(base, b+14*time.Second),
				Tasks: []reconciler.TaskRecord{{Name: reconciler.TaskUpdateDeployment, Status: reconciler.Completed, StartedAt: at(base, b+10*time.Second), FinishedAt: at(base, b+14*time.Second)}}}}},
	})
	r.bad.Status.Rollback = r.rollback.Name
	r.bad.Status.Phase = reconciler.RollbackCompleted
	r.bad.Status.Comment = trigger + "; restored by " + r.rollback.Spec.DisplayName
	r.bad.Status.FinishedAt = at(base, b+15*time.Second)
	r.bad.Status.History = []reconciler.PhaseChange{
		{Seq: 1, Phase: reconciler.Running, Stage: "dev", At: *at(base, b)},
		{Seq: 2, Phase: reconciler.RollingBack, Stage: "dev", At: *at(base, b+10*time.Second), Comment: trigger},
		{Seq: 3, Phase: reconciler.RollbackCompleted, Stage: "dev", At: *at(base, b+15*time.Second), Comment: r.bad.Status.Comment},
	}
	require.NoError(t, store.UpdateExecution(ctx, r.bad))

	good := reconciler.ReleaseRecord{Commit: goodCommit, ShortCommit: "1111111", Hash: "sha256:goodgoodgoodgood", Images: []string{"registry.example/web:1.0"}, Execution: r.good.Name, At: at(base, 10*time.Second)}
	restored := good
	restored.RestoredBy, restored.At = r.rollback.Spec.DisplayName, at(base, b+14*time.Second)
	bad := reconciler.ReleaseRecord{Commit: badCommit, ShortCommit: "2222222", Hash: "sha256:badbadbadbadbad", Images: []string{"registry.example/web:2.0-broken"}, Execution: r.bad.Name, At: at(base, b+10*time.Second), Reason: "rollout: ProgressDeadlineExceeded"}
	dev, err := store.Ledger(ctx, "web", "dev")
	require.NoError(t, err)
	dev.Status.Current, dev.Status.LastKnownGood = &restored, &good
	dev.Status.Verified, dev.Status.Failed = []reconciler.ReleaseRecord{good}, []reconciler.ReleaseRecord{bad}
	require.NoError(t, store.SaveLedger(ctx, dev))
	prod, err := store.Ledger(ctx, "web", "prod")
	require.NoError(t, err)
	prodGood := good
	prodGood.At = at(base, 22*time.Second)
	prod.Status.Current, prod.Status.LastKnownGood, prod.Status.Verified = &prodGood, &prodGood, []reconciler.ReleaseRecord{prodGood}
	require.NoError(t, store.SaveLedger(ctx, prod))

	p := store.NewPipeline("web")
	p.Spec.File, p.Spec.Enabled = "pipelines/web.yaml", true
	p.Status.Stages = []reconciler.PipelineStage{{Name: "dev", Cluster: "dev", Namespace: "web-dev"}, {Name: "prod", Cluster: "prod", Namespace: "web"}}
	p.Status.LastError = &reconciler.PipelineError{Reason: "RenderFailed", Message: "pipelines/web.yaml:12:5: unknown field \"strategy\"\napps/web/deployment.yaml:3:1: mapping values are not allowed here",
		File: "pipelines/web.yaml", Line: 12, Column: 5, Commit: badCommit}
	p.Status.Conditions = []metav1.Condition{{Type: "Ready", Status: metav1.ConditionFalse, Reason: "RenderFailed", Message: "see lastError", LastTransitionTime: metav1.Now()}}
	_, err = store.SavePipeline(ctx, p, nil)
	require.NoError(t, err)

	r.waiting = create(&reconciler.Execution{
		Spec: reconciler.ExecutionSpec{Pipeline: "api", Kind: reconciler.KindDeploy, Commit: goodCommit, CommitMessage: "api 3.1"},
		Status: reconciler.ExecutionStatus{Phase: reconciler.Waiting, Stage: "prod", Image: "registry.example/api:3.1", Comment: "stage prod waits for approval by alice, group:release-managers",
			StartedAt: at(base, 20*time.Minute),
			Stages: []reconciler.StageRecord{
				{Name: "dev", Status: reconciler.Completed, StartedAt: at(base, 20*time.Minute), FinishedAt: at(base, 20*time.Minute+10*time.Second), Tasks: tasks(20*time.Minute, reconciler.Completed, "")},
				{Name: "prod", Status: reconciler.Waiting, StartedAt: at(base, 20*time.Minute+11*time.Second)},
			}},
	})
	r.approval, err = store.CreateApproval(ctx, &reconciler.Approval{Spec: reconciler.ApprovalSpec{
		Execution: r.waiting.Name, DisplayName: r.waiting.Spec.DisplayName, Pipeline: "api", Stage: "prod",
		Approvers: []string{"alice", "group:release-managers"}, ExpiresAt: metav1.NewTime(time.Now().Add(time.Hour).Truncate(time.Second)),
	}})
	require.NoError(t, err)
	return r
}
