package reconciler

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/testcluster"
)

// TestApprovalStore creates, finds and decides approvals on the real API server. Who may decide
// is the admission policy's job, tested with several users in cmd/ebb.
func TestApprovalStore(t *testing.T) {
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(cluster.Config)
	top, err := testcluster.ModuleRoot()
	require.NoError(t, err)
	require.NoError(t, InstallCRDs(ctx, dyn, filepath.Join(top, "charts", "ebb", "crds")))
	ns, err := kubernetes.NewForConfigOrDie(cluster.Config).CoreV1().Namespaces().
		Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-approvals-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	store := NewStore(dyn, ns.Name)

	expires := metav1.NewTime(time.Now().Add(time.Hour).Truncate(time.Second))
	want := ApprovalSpec{Execution: "web-3", DisplayName: "web#3", Pipeline: "web", Stage: "prod",
		Approvers: []string{"alice", "group:release-managers"}, ExpiresAt: expires}
	created, err := store.CreateApproval(ctx, &Approval{Spec: want})
	require.NoError(t, err)
	assert.Equal(t, "web-3-prod", created.Name)
	assert.Equal(t, map[string]string{LabelPipeline: "web", LabelExecution: "web-3", LabelStage: "prod"}, created.Labels)
	assert.Equal(t, want, created.Spec)
	assert.False(t, created.Expired(time.Now()))
	assert.True(t, created.Expired(expires.Time))

	found, err := store.ApprovalFor(ctx, "web-3", "prod")
	require.NoError(t, err)
	assert.Equal(t, created.UID, found.UID)
	_, err = store.ApprovalFor(ctx, "web-3", "dev")
	assert.True(t, apierrors.IsNotFound(err), "want NotFound, got %v", err)

	decided, err := store.Decide(ctx, created.Name, false, "alice", "error budget spent")
	require.NoError(t, err)
	require.NotNil(t, decided.Spec.Decision)
	assert.Equal(t, Decision{Approved: false, By: "alice", At: decided.Spec.Decision.At, Comment: "error budget spent"}, *decided.Spec.Decision)
	assert.WithinDuration(t, time.Now(), decided.Spec.Decision.At.Time, time.Minute)

	// A restarted daemon asks again and gets the stored approval, decision included.
	again, err := store.CreateApproval(ctx, &Approval{Spec: want})
	require.NoError(t, err)
	assert.Equal(t, created.UID, again.UID)
	require.NotNil(t, again.Spec.Decision)
	assert.Equal(t, "alice", again.Spec.Decision.By)

	list, err := store.ListApprovals(ctx, "web-3")
	require.NoError(t, err)
	assert.Len(t, list, 1)
	_, err = store.GetApproval(ctx, "web-4-prod")
	assert.True(t, apierrors.IsNotFound(err), "want NotFound, got %v", err)
}
