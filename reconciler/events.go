package reconciler

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
)

// eventRef names the object an Event is about.
type eventRef struct {
	apiVersion, kind, namespace, name string
	uid                               types.UID
}

// reportingController is the controller Events say reported them.
const reportingController = "ebb.dev/reconciler"

// recorders holds one client-go event recorder (tools/events) per cluster client ebb records
// Events with: the home cluster's for executions and Pipelines, each target's for its
// Deployments and restored objects. A recorder sends events.k8s.io/v1 Events in the
// background, and one that repeats (the same message about the same object, within minutes)
// becomes a series on the first Event, counted, instead of a new Event each time: a drift
// restored every resync is one Event with a count. Each recorder lives as long as the process.
var recorders = struct {
	sync.Mutex
	byClient map[kubernetes.Interface]events.EventRecorder
}{byClient: map[kubernetes.Interface]events.EventRecorder{}}

// recorderFor returns the recorder of cs, starting it on first use.
func recorderFor(cs kubernetes.Interface) events.EventRecorder {
	recorders.Lock()
	defer recorders.Unlock()
	if r, ok := recorders.byClient[cs]; ok {
		return r
	}
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	b.StartRecordingToSink(make(chan struct{})) // never stopped: the recorder is the process's
	r := b.NewRecorder(scheme.Scheme, reportingController)
	recorders.byClient[cs] = r
	return r
}

// recordEvent records a Kubernetes Event about ref, reported by ebb. It is best effort and
// returns at once: client-go sends it, retrying a few times, and logs (through klog) what it
// cannot send.
//
// client-go groups Events by object, type, reason and action, not by message: two failures of
// different releases on one Deployment (a crash loop, then an image that cannot be pulled)
// would become one Event with the first message. The action is therefore the reason and a
// digest of the message, so that only true repeats, the same message again, are grouped.
func recordEvent(_ context.Context, cs kubernetes.Interface, log *slog.Logger, ref eventRef, typ, reason, message string) {
	if len(message) > 1024 {
		message = message[:1021] + "..."
	}
	log.Debug("event", "object", ref.kind+"/"+ref.name, "type", typ, "reason", reason)
	regarding := &corev1.ObjectReference{APIVersion: ref.apiVersion, Kind: ref.kind, Namespace: ref.namespace, Name: ref.name, UID: ref.uid}
	digest := fnv.New32a()
	_, _ = digest.Write([]byte(message))
	action := fmt.Sprintf("%s-%08x", reason, digest.Sum32())
	recorderFor(cs).Eventf(regarding, nil, typ, reason, action, "%s", message)
}
