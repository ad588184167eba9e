package reconciler

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestEventsGroupRepeats records Events through client-go's tools/events against the real API
// server: an Event that repeats on the same object is one Event whose series counts the
// repeats, readable through events.k8s.io/v1 and core/v1 alike; another reason is another
// Event.
func TestEventsGroupRepeats(t *testing.T) {
	ctx := context.Background()
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-events-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	ref := eventRef{apiVersion: "apps/v1", kind: "Deployment", namespace: ns.Name, name: "web"}
	log := slog.New(slog.DiscardHandler)
	drift := func() {
		recordEvent(ctx, cs, log, ref, corev1.EventTypeNormal, "DriftRestored", "restored Deployment web: spec.replicas changed by hand")
	}
	drift()
	// Repeats come a resync apart, after the first Event exists (a repeat sent before the
	// Event it counts on is created is retried by client-go 10s later).
	require.Eventually(t, func() bool {
		list, err := cs.EventsV1().Events(ns.Name).List(ctx, metav1.ListOptions{})
		return err == nil && len(list.Items) == 1
	}, 10*time.Second, 20*time.Millisecond)
	drift()
	drift()
	recordEvent(ctx, cs, log, ref, corev1.EventTypeWarning, "RolledBack", "rolled back to web#1")
	// Another message for the same reason is news, not a repeat.
	recordEvent(ctx, cs, log, ref, corev1.EventTypeNormal, "DriftRestored", "restored Deployment web: an env var changed by hand")

	require.Eventually(t, func() bool {
		list, err := cs.EventsV1().Events(ns.Name).List(ctx, metav1.ListOptions{})
		if err != nil || len(list.Items) != 3 {
			return false
		}
		for _, ev := range list.Items {
			if ev.Note == "restored Deployment web: spec.replicas changed by hand" && (ev.Series == nil || ev.Series.Count < 2) {
				return false
			}
		}
		return true
	}, 15*time.Second, 50*time.Millisecond, "three equal DriftRestored make one Event with a series; RolledBack and the other drift one each")

	core, err := cs.CoreV1().Events(ns.Name).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Deployment,involvedObject.name=web,reason=DriftRestored"})
	require.NoError(t, err)
	require.Len(t, core.Items, 2, "core/v1 sees the same Events")
	ev := core.Items[0]
	if ev.Series == nil {
		ev = core.Items[1]
	}
	assert.Equal(t, "restored Deployment web: spec.replicas changed by hand", ev.Message)
	require.NotNil(t, ev.Series, "the repeats are its series")
	assert.GreaterOrEqual(t, ev.Series.Count, int32(2))
	assert.Equal(t, reportingController, ev.ReportingController)
	assert.Equal(t, corev1.EventTypeNormal, ev.Type)
}
