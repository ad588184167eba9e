package realapps

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// TestHandEditsAreRestored edits kustomize-guestbook's objects in dev by hand, one after the
// other: the Deployment scaled, its image changed, the Service deleted. The drift checks
// restore each within a few resyncs, without an execution.
func TestHandEditsAreRestored(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "handedit", kustomizeGuestbook, envOptions{})
	e.startDaemon()
	e.requireCompleted(e.release(kustomizeGuestbook.tag, "release as written"))
	ctx := context.Background()
	ns, name := e.devNS(), kustomizeGuestbook.service
	deployments := e.devCS.AppsV1().Deployments(ns)
	restored := 30 * resync // a few resyncs, with room for a busy machine

	scale, err := deployments.GetScale(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	require.EqualValues(t, 1, scale.Spec.Replicas, "the manifests' replicas")
	scale.Spec.Replicas = 3
	_, err = deployments.UpdateScale(ctx, name, scale, metav1.UpdateOptions{})
	require.NoError(t, err)
	assert.Eventually(t, func() bool {
		d, err := deployments.Get(ctx, name, metav1.GetOptions{})
		return err == nil && d.Spec.Replicas != nil && *d.Spec.Replicas == 1
	}, restored, 100*time.Millisecond, "the Deployment scaled by hand was not scaled back to 1")

	// The controller still writes the Deployment after the scale: edit the latest version.
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d, err := deployments.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		d.Spec.Template.Spec.Containers[0].Image = kustomizeGuestbook.image + ":by-hand"
		_, err = deployments.Update(ctx, d, metav1.UpdateOptions{})
		return err
	}))
	assert.Eventually(t, func() bool {
		return image(t, e.devCS, ns, name) == e.imageOf(kustomizeGuestbook.tag)
	}, restored, 100*time.Millisecond, "the image changed by hand was not restored")

	require.NoError(t, e.devCS.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{}))
	assert.Eventually(t, func() bool { return exists(t, e.devDyn, services, ns, name) }, restored, 100*time.Millisecond,
		"the Service deleted by hand was not restored")

	assert.Equal(t, 1, len(e.executions()), "restoring drift is not an execution: %s", e.describeAll())
}
