package reconciler

import (
	"context"
	"fmt"
	"log/slog"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// PipelineResource is the resource of Pipeline objects.
var PipelineResource = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "pipelines"}

// Pipeline shows, in the cluster, one pipeline found in Git: whether it is in sync, what each
// stage runs and would roll back to, and the last error with its file:line:col. ebb writes
// it; people change Git, never this object. It lives next to the Executions and
// StageLedgers, named ObjectName(pipeline name).
type Pipeline struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              PipelineSpec   `json:"spec"`
	Status            PipelineStatus `json:"status,omitempty"`
}

// PipelineSpec mirrors the pipeline's file, read-only.
type PipelineSpec struct {
	// Pipeline is the pipeline's name in Git (its metadata.name), or, for a file whose
	// metadata.name cannot be read, a name derived from the file's base name.
	Pipeline string `json:"pipeline"`
	// File is the pipeline file's path inside the repository.
	File string `json:"file,omitempty"`
	// Enabled mirrors the file's spec.enabled: a pipeline not enabled is planned only.
	Enabled bool `json:"enabled"`
}

// PipelineStatus is what ebb knows of the pipeline at the last commit it planned.
type PipelineStatus struct {
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions are Ready (always), Reconciling and Stalled (only while true).
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// LastPlannedCommit is the newest commit ebb planned the pipeline at, and when.
	LastPlannedCommit *CommitRef `json:"lastPlannedCommit,omitempty"`
	// Stages are the pipeline's stages, with their releases copied from their StageLedgers.
	Stages []PipelineStage `json:"stages,omitempty"`
	// LastError is the error that keeps the pipeline from being planned at LastPlannedCommit
	// (it does not parse or validate, or a stage does not render); nil when there is none.
	LastError *PipelineError `json:"lastError,omitempty"`
	// RemovedFromGit is the commit at which the pipeline's file disappeared from Git; its
	// objects are left in the cluster. Nil while the pipeline is in Git.
	RemovedFromGit *CommitRef `json:"removedFromGit,omitempty"`
}

// CommitRef names a commit, and when ebb saw it.
type CommitRef struct {
	SHA      string       `json:"sha"`
	ShortSHA string       `json:"shortSHA,omitempty"`
	At       *metav1.Time `json:"at,omitempty"`
}

// NewCommitRef returns the reference of commit sha seen at at.
func NewCommitRef(sha string, at metav1.Time) *CommitRef {
	return &CommitRef{SHA: sha, ShortSHA: short(sha), At: &at}
}

// PipelineStage is one stage of a pipeline and its releases.
type PipelineStage struct {
	Name      string `json:"name"`
	Cluster   string `json:"cluster,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	// Current, LastKnownGood and Quarantined are the ledger's current, last known-good and
	// failed releases.
	Current       *ReleaseRecord  `json:"current,omitempty"`
	LastKnownGood *ReleaseRecord  `json:"lastKnownGood,omitempty"`
	Quarantined   []ReleaseRecord `json:"quarantined,omitempty"`
}

// PipelineError is an error of the pipeline's file, located.
type PipelineError struct {
	// Reason is the Ready condition's reason for it: InvalidPipeline or RenderFailed.
	Reason string `json:"reason"`
	// Message is every error, one `file:line:col: message` a line.
	Message string `json:"message"`
	// File, Line and Column locate the first error.
	File   string `json:"file,omitempty"`
	Line   int    `json:"line,omitempty"`
	Column int    `json:"column,omitempty"`
	// Commit is the commit at which it was found.
	Commit string `json:"commit,omitempty"`
}

func (s *Store) pipelines() dynamic.ResourceInterface {
	return s.client.Resource(PipelineResource).Namespace(s.namespace)
}

// ListPipelines lists the Pipeline objects, by name.
func (s *Store) ListPipelines(ctx context.Context) ([]Pipeline, error) {
	list, err := s.pipelines().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pipelines: %w", err)
	}
	out := make([]Pipeline, len(list.Items))
	for i := range list.Items {
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(list.Items[i].Object, &out[i]); err != nil {
			return nil, fmt.Errorf("read pipeline %s: %w", list.Items[i].GetName(), err)
		}
	}
	return out, nil // the API server lists by name
}

// NewPipeline returns an unsaved Pipeline object for the pipeline named name.
func (s *Store) NewPipeline(name string) *Pipeline {
	p := &Pipeline{Spec: PipelineSpec{Pipeline: name}}
	p.APIVersion, p.Kind = Group+"/"+Version, "Pipeline"
	p.Name, p.Namespace = ObjectName(name), s.namespace
	p.Labels = map[string]string{LabelPipeline: labelValue(name)}
	return p
}

// SavePipeline makes the stored Pipeline object want, given have, the object as last read
// or saved (nil when there is none), and returns the object as stored. It writes only what
// differs: nothing when want equals have; a create, then a status write, for a new object;
// an update of the spec, then a status write with the new observedGeneration, when the spec
// changed; a status write alone otherwise. want's conditions must be set (see
// Conditions.Apply); its observedGeneration is set here.
func (s *Store) SavePipeline(ctx context.Context, want, have *Pipeline) (*Pipeline, error) {
	want = want.DeepCopy()
	if have == nil {
		u, err := toUnstructured(want)
		if err != nil {
			return nil, err
		}
		created, err := s.pipelines().Create(ctx, u, metav1.CreateOptions{FieldManager: FieldManager})
		if err != nil {
			return nil, fmt.Errorf("create pipeline %s: %w", want.Name, err)
		}
		if have, err = pipelineFrom(created); err != nil {
			return nil, err
		}
	} else if !equality.Semantic.DeepEqual(want.Spec, have.Spec) || !equality.Semantic.DeepEqual(want.Labels, have.Labels) {
		next := have.DeepCopy()
		next.Spec, next.Labels = want.Spec, want.Labels
		u, err := toUnstructured(next)
		if err != nil {
			return nil, err
		}
		updated, err := s.pipelines().Update(ctx, u, metav1.UpdateOptions{FieldManager: FieldManager})
		if err != nil {
			return nil, fmt.Errorf("update pipeline %s: %w", want.Name, err)
		}
		if have, err = pipelineFrom(updated); err != nil {
			return nil, err
		}
	}
	want.Status.ObservedGeneration = have.Generation
	for i := range want.Status.Conditions {
		want.Status.Conditions[i].ObservedGeneration = have.Generation
	}
	if equality.Semantic.DeepEqual(want.Status, have.Status) {
		return have, nil
	}
	next := have.DeepCopy()
	next.Status = want.Status
	u, err := toUnstructured(next)
	if err != nil {
		return nil, err
	}
	updated, err := s.pipelines().UpdateStatus(ctx, u, metav1.UpdateOptions{FieldManager: FieldManager})
	if err != nil {
		return nil, fmt.Errorf("update status of pipeline %s: %w", want.Name, err)
	}
	return pipelineFrom(updated)
}

func pipelineFrom(u *unstructured.Unstructured) (*Pipeline, error) {
	p := &Pipeline{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, p); err != nil {
		return nil, fmt.Errorf("read pipeline %s: %w", u.GetName(), err)
	}
	return p, nil
}

// PipelineEvent records a Kubernetes Event on a Pipeline object, best effort.
func PipelineEvent(ctx context.Context, cs kubernetes.Interface, log *slog.Logger, p *Pipeline, typ, reason, message string) {
	recordEvent(ctx, cs, log, eventRef{
		apiVersion: Group + "/" + Version, kind: "Pipeline", namespace: p.Namespace, name: p.Name, uid: p.UID,
	}, typ, reason, message)
}

// DeepCopy returns a copy of p that shares nothing with it (times to the second, as stored).
func (p *Pipeline) DeepCopy() *Pipeline { return deepCopy(p) }
