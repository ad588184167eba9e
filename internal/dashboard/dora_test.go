package dashboard

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/reconciler"
)

// TestDORA computes the figures from executions as the reconciler records them.
func TestDORA(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	deploy := func(name string, created time.Duration, phase reconciler.Status) *reconciler.Execution {
		x := &reconciler.Execution{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(now.Add(created))},
			Spec: reconciler.ExecutionSpec{Kind: reconciler.KindDeploy}, Status: reconciler.ExecutionStatus{Phase: phase}}
		x.Status.FinishedAt = at(now, created+time.Minute)
		return x
	}
	failed := func(x *reconciler.Execution, taskEnd time.Duration, rollback string) *reconciler.Execution {
		x.Status.Stages = []reconciler.StageRecord{{Name: "dev", Tasks: []reconciler.TaskRecord{{Name: reconciler.TaskVerifyDeployment, Status: reconciler.Failed, FinishedAt: at(now, taskEnd)}}}}
		x.Status.Rollback = rollback
		return x
	}
	rollback := func(name string, phase reconciler.Status, finished time.Duration) *reconciler.Execution {
		return &reconciler.Execution{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(now.Add(finished - time.Minute))},
			Spec: reconciler.ExecutionSpec{Kind: reconciler.KindRollback}, Status: reconciler.ExecutionStatus{Phase: phase, FinishedAt: at(now, finished)}}
	}
	tests := []struct {
		name       string
		executions []*reconciler.Execution
		want       dora
	}{
		{name: "none", want: dora{Window: "1h0m", Frequency: "0.0 a week", FailureRate: "–", TimeToRestore: "–"}},
		{
			name: "a rollback restores, a running one does not count",
			executions: []*reconciler.Execution{
				deploy("web-1", -10*day, reconciler.Completed),
				failed(deploy("web-2", -5*day, reconciler.RollbackCompleted), -5*day+2*time.Minute, "web-dev-rollback-1"),
				rollback("web-dev-rollback-1", reconciler.Completed, -5*day+5*time.Minute),
				deploy("web-3", -time.Hour, reconciler.Running),
			},
			want: dora{Deploys: 1, Window: "10d0h", Frequency: "0.7 a week", Failures: 1, Changes: 2, FailureRate: "50%", Restores: 1, TimeToRestore: "3m"},
		},
		{
			name: "a failed rollback is restored by the next completed deploy",
			executions: []*reconciler.Execution{
				failed(deploy("web-1", -2*day, reconciler.RollbackFailed), -2*day+time.Minute, "web-dev-rollback-1"),
				rollback("web-dev-rollback-1", reconciler.Failed, -2*day+2*time.Minute),
				deploy("web-2", -day, reconciler.Completed),
				deploy("web-3", -12*time.Hour, reconciler.Completed),
			},
			want: dora{Deploys: 2, Window: "2d0h", Frequency: "1.0 a day", Failures: 1, Changes: 3, FailureRate: "33%", Restores: 1, TimeToRestore: "24h0m"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, doraOf(tt.executions, now))
		})
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                  "0s",
		850 * time.Millisecond:        "850ms",
		12340 * time.Millisecond:      "12.3s",
		4*time.Minute + 5*time.Second: "4m5s",
		4 * time.Minute:               "4m",
		2*time.Hour + 10*time.Minute:  "2h10m",
		3*24*time.Hour + 4*time.Hour:  "3d4h",
		47*time.Hour + 59*time.Minute: "47h59m",
	} {
		assert.Equal(t, want, humanDuration(d), d.String())
	}
}
