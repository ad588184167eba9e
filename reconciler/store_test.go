package reconciler

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/testcluster"
)

// newRecords installs the CRDs and returns a store over a new records namespace.
func newRecords(t *testing.T) (*Store, string) {
	t.Helper()
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(cluster.Config)
	top, err := testcluster.ModuleRoot()
	require.NoError(t, err)
	require.NoError(t, InstallCRDs(ctx, dyn, filepath.Join(top, "charts", "ebb", "crds")))
	ns, err := kubernetes.NewForConfigOrDie(cluster.Config).CoreV1().Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "records-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	return NewStore(dyn, ns.Name), ns.Name
}

// recorder is a RecordObserver that keeps what it heard.
type recorder struct {
	executions []*Execution
	ledgers    []*StageLedger
}

func (r *recorder) ExecutionWritten(x *Execution) { r.executions = append(r.executions, x) }
func (r *recorder) LedgerWritten(l *StageLedger)  { r.ledgers = append(r.ledgers, l) }

// wantCondition is a condition as a test expects it: "" for absent.
type wantCondition struct{ status, reason string }

func assertConditions(t *testing.T, conds []metav1.Condition, generation int64, want map[string]wantCondition) {
	t.Helper()
	for _, typ := range []string{ConditionReady, ConditionReconciling, ConditionStalled} {
		c := meta.FindStatusCondition(conds, typ)
		w := want[typ]
		if w.status == "" {
			assert.Nil(t, c, "%s is absent", typ)
			continue
		}
		if assert.NotNil(t, c, "%s is present", typ) {
			assert.Equal(t, w.status, string(c.Status), typ)
			assert.Equal(t, w.reason, c.Reason, typ)
			assert.NotEmpty(t, c.Message, typ)
			assert.Equal(t, generation, c.ObservedGeneration, typ)
			assert.False(t, c.LastTransitionTime.IsZero(), typ)
		}
	}
}

// TestExecutionStatusSubresource creates an execution in each phase and moves it to another,
// through the status subresource, and reads back spec, status and conditions.
func TestExecutionStatusSubresource(t *testing.T) {
	store, _ := newRecords(t)
	obs := &recorder{}
	store.observer = obs
	ctx := context.Background()
	ready := func(reason string) map[string]wantCondition {
		return map[string]wantCondition{ConditionReady: {"True", reason}}
	}
	inProgress := func(reason string) map[string]wantCondition {
		return map[string]wantCondition{ConditionReady: {"False", reason}, ConditionReconciling: {"True", reason}}
	}
	notReady := func(reason string) map[string]wantCondition {
		return map[string]wantCondition{ConditionReady: {"False", reason}}
	}
	stalled := func(reason string) map[string]wantCondition {
		return map[string]wantCondition{ConditionReady: {"False", reason}, ConditionStalled: {"True", reason}}
	}
	tests := []struct {
		name    string
		kind    ExecutionKind
		phase   Status
		failure FailureClass
		want    map[string]wantCondition
	}{
		{"queued", KindDeploy, Queued, "", inProgress("Queued")},
		{"running", KindDeploy, Running, "", inProgress("Running")},
		{"waiting for approval", KindDeploy, Waiting, "", inProgress("Waiting")},
		{"waiting for its cluster", KindDeploy, Waiting, FailureWaiting, inProgress("WaitingForCluster")},
		{"rolling back", KindDeploy, RollingBack, FailureVerification, inProgress("RollingBack")},
		{"completed", KindDeploy, Completed, "", ready("Completed")},
		{"rollback completed", KindRollback, Completed, "", ready("Completed")},
		{"failed, stalled", KindDeploy, Failed, FailureStalled, stalled("Failed")},
		{"failed, the cluster's fault", KindDeploy, Failed, FailureWaiting, notReady("Failed")},
		{"canceled", KindDeploy, Canceled, "", notReady("Canceled")},
		{"rolled back", KindDeploy, RollbackCompleted, FailureVerification, notReady("RollbackCompleted")},
		{"rollback failed", KindDeploy, RollbackFailed, FailureVerification, notReady("RollbackFailed")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			started := metav1.NewTime(time.Now().Truncate(time.Second))
			x := &Execution{Spec: ExecutionSpec{Pipeline: "web", Kind: tt.kind, Commit: "0123456789abcdef0123", CommitMessage: "release " + tt.name}}
			if tt.kind == KindRollback {
				x.Spec.Stage, x.Spec.Parent = "dev", "web-1"
			}
			status := ExecutionStatus{Phase: tt.phase, Failure: tt.failure, Comment: "comment of " + tt.name, Stage: "dev", StartedAt: &started,
				Image: "registry.example/web:1", Rollback: "web-dev-rollback-1",
				Stages: []StageRecord{{Name: "dev", Status: tt.phase, ReleaseHash: "sha256:abc", Images: []string{"registry.example/web:1"},
					StartedAt: &started, Message: "stage message",
					Tasks: []TaskRecord{{Name: TaskUpdateDeployment, Status: Completed, StartedAt: &started, FinishedAt: &started, Message: "task message"}}}}}
			x.Status = status
			created, err := store.CreateExecution(ctx, x)
			require.NoError(t, err)

			// Read back: the spec the create stored, and the status the status write stored.
			got, err := store.GetExecution(ctx, created.Name)
			require.NoError(t, err)
			assert.Equal(t, created.ResourceVersion, got.ResourceVersion, "the store knows the latest resourceVersion")
			assert.Equal(t, "web", got.Spec.Pipeline)
			assert.Equal(t, tt.kind, got.Spec.Kind)
			assert.Equal(t, "0123456", got.Spec.ShortCommit)
			assert.Equal(t, "release "+tt.name, got.Spec.CommitMessage)
			assert.Equal(t, created.Spec.DisplayName, got.Spec.DisplayName)
			assert.Equal(t, x.Spec.Parent, got.Spec.Parent)
			wantStatus := status
			wantStatus.ObservedGeneration, wantStatus.Conditions = got.Generation, got.Status.Conditions
			assert.Equal(t, wantStatus, got.Status, "every status field survives the create")
			assert.EqualValues(t, 1, got.Status.ObservedGeneration)
			assertConditions(t, got.Status.Conditions, got.Generation, tt.want)
			if assert.NotEmpty(t, obs.executions) {
				assert.Equal(t, tt.phase, obs.executions[len(obs.executions)-1].Status.Phase, "the observer heard of the write")
			}

			// An update writes the status only, and keeps the spec.
			got.Status.Phase, got.Status.Failure, got.Status.Comment = Completed, "", "done"
			got.Spec.CommitMessage = "changed" // ignored: specs do not change after creation
			require.NoError(t, store.UpdateExecution(ctx, got))
			again, err := store.GetExecution(ctx, created.Name)
			require.NoError(t, err)
			assert.Equal(t, got.ResourceVersion, again.ResourceVersion)
			assert.Equal(t, "release "+tt.name, again.Spec.CommitMessage, "a status write leaves the spec alone")
			assert.Equal(t, Completed, again.Status.Phase)
			assert.Equal(t, "done", again.Status.Comment)
			assert.Equal(t, status.Stages, again.Status.Stages)
			assertConditions(t, again.Status.Conditions, again.Generation, ready("Completed"))
		})
	}
}

// TestExecutionConditionsKeepTransitionTime checks that a status write whose conditions did
// not change keeps their lastTransitionTime, and that a change moves it.
func TestExecutionConditionsKeepTransitionTime(t *testing.T) {
	store, _ := newRecords(t)
	ctx := context.Background()
	x := &Execution{Spec: ExecutionSpec{Pipeline: "web", Kind: KindDeploy, Commit: "abc"}}
	x.Status.Phase = Running
	x, err := store.CreateExecution(ctx, x)
	require.NoError(t, err)
	first := *meta.FindStatusCondition(x.Status.Conditions, ConditionReconciling)
	time.Sleep(1100 * time.Millisecond)
	x.Status.Comment = "task 2"
	require.NoError(t, store.UpdateExecution(ctx, x))
	got, err := store.GetExecution(ctx, x.Name)
	require.NoError(t, err)
	c := meta.FindStatusCondition(got.Status.Conditions, ConditionReconciling)
	require.NotNil(t, c)
	assert.True(t, first.LastTransitionTime.Equal(&c.LastTransitionTime), "still Reconciling: the transition time stays")
	assert.Equal(t, "task 2", c.Message)

	got.Status.Phase = Completed
	require.NoError(t, store.UpdateExecution(ctx, got))
	got, err = store.GetExecution(ctx, x.Name)
	require.NoError(t, err)
	assert.Nil(t, meta.FindStatusCondition(got.Status.Conditions, ConditionReconciling), "Reconciling is removed once false")
	r := meta.FindStatusCondition(got.Status.Conditions, ConditionReady)
	require.NotNil(t, r)
	assert.True(t, r.LastTransitionTime.After(first.LastTransitionTime.Time), "Ready turned True later")
}

// TestLedgerStatusSubresource saves a new ledger (create, then status) and updates it, and
// reads back its releases and conditions.
func TestLedgerStatusSubresource(t *testing.T) {
	store, _ := newRecords(t)
	obs := &recorder{}
	store.observer = obs
	ctx := context.Background()
	at := metav1.NewTime(time.Now().Truncate(time.Second))
	good := ReleaseRecord{Commit: "1111111111", ShortCommit: "1111111", Hash: "sha256:good", Images: []string{"web:1"}, Execution: "web#1", At: &at}
	bad := ReleaseRecord{Commit: "2222222222", ShortCommit: "2222222", Hash: "sha256:bad", Images: []string{"web:2"}, Execution: "web#2", At: &at, Reason: "rollout failed"}

	tests := []struct {
		name   string
		status StageLedgerStatus
		want   map[string]wantCondition
	}{
		{"first release failed", StageLedgerStatus{Failed: []ReleaseRecord{bad}},
			map[string]wantCondition{ConditionReady: {"False", "ReleaseFailed"}, ConditionStalled: {"True", "ReleaseFailed"}}},
		{"verified", StageLedgerStatus{Current: &good, LastKnownGood: &good, Verified: []ReleaseRecord{good}},
			map[string]wantCondition{ConditionReady: {"True", "Verified"}}},
		{"rolled back", StageLedgerStatus{Current: &ReleaseRecord{Commit: good.Commit, ShortCommit: good.ShortCommit, Hash: good.Hash, RestoredBy: "web_dev_rollback#1", At: &at},
			LastKnownGood: &good, Verified: []ReleaseRecord{good}, Failed: []ReleaseRecord{bad}},
			map[string]wantCondition{ConditionReady: {"True", "RestoredKnownGood"}}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stage := string(rune('a' + i))
			l, err := store.Ledger(ctx, "web", stage)
			require.NoError(t, err)
			require.Empty(t, l.ResourceVersion, "a new ledger")
			l.Status = tt.status
			require.NoError(t, store.SaveLedger(ctx, l))
			got, err := store.Ledger(ctx, "web", stage)
			require.NoError(t, err)
			assert.Equal(t, l.ResourceVersion, got.ResourceVersion)
			assert.Equal(t, StageLedgerSpec{Pipeline: "web", Stage: stage}, got.Spec)
			assert.Equal(t, tt.status.Current, got.Status.Current)
			assert.Equal(t, tt.status.LastKnownGood, got.Status.LastKnownGood)
			assert.Equal(t, tt.status.Verified, got.Status.Verified)
			assert.Equal(t, tt.status.Failed, got.Status.Failed)
			assert.EqualValues(t, 1, got.Status.ObservedGeneration)
			assertConditions(t, got.Status.Conditions, got.Generation, tt.want)
			assert.Equal(t, got.Status, obs.ledgers[len(obs.ledgers)-1].Status, "the observer heard of the write")

			// An update of a stored ledger writes its status only.
			got.Status.recordVerified(ReleaseRecord{Commit: "3333333333", ShortCommit: "3333333", Hash: "sha256:new", Execution: "web#3", At: &at})
			require.NoError(t, store.SaveLedger(ctx, got))
			again, err := store.Ledger(ctx, "web", stage)
			require.NoError(t, err)
			assert.Equal(t, "sha256:new", again.Status.Current.Hash)
			assert.Equal(t, "sha256:new", again.Status.LastKnownGood.Hash)
			assertConditions(t, again.Status.Conditions, again.Generation, map[string]wantCondition{ConditionReady: {"True", "Verified"}})
		})
	}
	all, err := store.ListLedgers(ctx, "web")
	require.NoError(t, err)
	assert.Len(t, all, len(tests))
}

// TestKubectlWaitForExecution checks that `kubectl wait --for=condition=Ready` on an
// execution returns once it completes, and times out on one that failed.
func TestKubectlWaitForExecution(t *testing.T) {
	store, ns := newRecords(t)
	ctx := context.Background()
	kubectl, err := testcluster.Bin("kubectl")
	require.NoError(t, err)
	x := &Execution{Spec: ExecutionSpec{Pipeline: "web", Kind: KindDeploy, Commit: "abc"}}
	x.Status.Phase = Running
	x, err = store.CreateExecution(ctx, x)
	require.NoError(t, err)

	wait := exec.Command(kubectl, "--kubeconfig", cluster.Kubeconfig, "-n", ns, "wait", "--for=condition=Ready", "execution/"+x.Name, "--timeout=60s")
	var out strings.Builder
	wait.Stdout, wait.Stderr = &out, &out
	require.NoError(t, wait.Start())
	done := make(chan error, 1)
	go func() { done <- wait.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("kubectl wait returned while the execution ran: %v\n%s", err, out.String())
	case <-time.After(2 * time.Second):
	}
	x.Status.Phase = Completed
	require.NoError(t, store.UpdateExecution(ctx, x))
	select {
	case err := <-done:
		require.NoError(t, err, out.String())
		assert.Contains(t, out.String(), "execution.ebb.dev/"+x.Name+" condition met")
	case <-time.After(30 * time.Second):
		_ = wait.Process.Kill()
		t.Fatalf("kubectl wait did not return after the execution completed:\n%s", out.String())
	}

	failed := &Execution{Spec: ExecutionSpec{Pipeline: "web", Kind: KindDeploy, Commit: "def"}}
	failed.Status.Phase, failed.Status.Failure = Failed, FailureStalled
	failed, err = store.CreateExecution(ctx, failed)
	require.NoError(t, err)
	b, err := exec.Command(kubectl, "--kubeconfig", cluster.Kubeconfig, "-n", ns, "wait", "--for=condition=Ready", "execution/"+failed.Name, "--timeout=1s").CombinedOutput()
	assert.Error(t, err, "a failed execution never becomes Ready: %s", b)
	b, err = exec.Command(kubectl, "--kubeconfig", cluster.Kubeconfig, "-n", ns, "wait", "--for=condition=Stalled", "execution/"+failed.Name, "--timeout=10s").CombinedOutput()
	assert.NoError(t, err, "a stalled execution says so: %s", b)
}

// TestResumeExecutionWithoutPhase: an execution whose status write after its create failed
// has no phase and no task. A restarted daemon resumes it from its first task: the commit
// runs once, in that record.
func TestResumeExecutionWithoutPhase(t *testing.T) {
	f := newFixture(t, true)
	target := f.commit("c1", "release 1.0", "1.0")
	x := &Execution{Spec: ExecutionSpec{DisplayName: "web#1", Pipeline: "web", Number: 1, Kind: KindDeploy, Commit: "c1", ShortCommit: "c1"}}
	x.APIVersion, x.Kind, x.Name, x.Namespace = Group+"/"+Version, "Execution", "web-1", f.records
	x.Labels = map[string]string{LabelPipeline: "web", LabelKind: string(KindDeploy), LabelCommit: "c1"}
	u, err := toUnstructured(x)
	require.NoError(t, err)
	_, err = f.r.Store().executions().Create(context.Background(), u, metav1.CreateOptions{})
	require.NoError(t, err)

	restarted := New(f.r.opts)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); restarted.Wait() })
	require.NoError(t, restarted.Resume(ctx))
	restarted.Sync(ctx, []*Target{target})
	done := f.waitFor("web#1", Completed)
	assert.NotNil(t, done.Status.StartedAt)
	assert.Len(t, f.executions(), 1, "the record without a phase is the commit's execution")
	assert.Equal(t, "registry.example/web:1.0", f.image())
}
