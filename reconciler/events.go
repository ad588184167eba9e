package reconciler

import (
	"context"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// eventRef names the object an Event is about.
type eventRef struct {
	apiVersion, kind, namespace, name string
	uid                               types.UID
}

// recordEvent creates a Kubernetes Event about ref, reported by ebb. It is best effort.
func recordEvent(ctx context.Context, cs kubernetes.Interface, log *slog.Logger, ref eventRef, typ, reason, message string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if len(message) > 1024 {
		message = message[:1021] + "..."
	}
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: ref.name + ".", Namespace: ref.namespace},
		InvolvedObject: corev1.ObjectReference{
			APIVersion: ref.apiVersion, Kind: ref.kind, Namespace: ref.namespace, Name: ref.name, UID: ref.uid,
		},
		Type: typ, Reason: reason, Message: message,
		Source:         corev1.EventSource{Component: "ebb"},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "ebb.dev/reconciler", ReportingInstance: "ebb",
	}
	if _, err := cs.CoreV1().Events(ref.namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		log.Debug("record event", "object", ref.kind+"/"+ref.name, "reason", reason, "err", err)
	}
}
