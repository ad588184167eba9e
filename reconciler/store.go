package reconciler

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"

	"ebb.dev/ebb/internal/ssa"
)

// Store reads and writes Execution and StageLedger objects in one namespace of the cluster
// ebb runs in. Every write is an update with the object's resourceVersion, so two writers
// can never silently overwrite each other.
//
// Both kinds have a status subresource: a create stores the spec (the API server drops the
// status), and every later write is a status write. Specs never change after creation, so a
// record costs one create and one status write, then one status write per change.
type Store struct {
	client    dynamic.Interface
	namespace string
	// observer, when set, hears of every record written.
	observer RecordObserver
	// idx, once the reconciler listed every execution, answers executionsOf from memory.
	idx atomic.Pointer[executionIndex]
}

// NewStore returns a Store over namespace.
func NewStore(client dynamic.Interface, namespace string) *Store {
	return &Store{client: client, namespace: namespace}
}

func (s *Store) executions() dynamic.ResourceInterface {
	return s.client.Resource(ExecutionResource).Namespace(s.namespace)
}

func (s *Store) ledgers() dynamic.ResourceInterface {
	return s.client.Resource(StageLedgerResource).Namespace(s.namespace)
}

// CreateExecution creates x with the next free number for its display name prefix (its
// pipeline, or its pipeline and stage for a rollback), filling in Number, DisplayName and
// Name, and returns the stored object.
func (s *Store) CreateExecution(ctx context.Context, x *Execution) (*Execution, error) {
	existing, err := s.executionsOf(ctx, x.Spec.Pipeline)
	if err != nil {
		return nil, err
	}
	n := 0
	for _, e := range existing {
		if e.Spec.Kind == x.Spec.Kind && e.Spec.Stage == x.Spec.Stage && e.Spec.Number > n {
			n = e.Spec.Number
		}
	}
	x.APIVersion, x.Kind = Group+"/"+Version, "Execution"
	x.Namespace = s.namespace
	if x.Labels == nil {
		x.Labels = map[string]string{}
	}
	x.Labels[LabelPipeline] = labelValue(x.Spec.Pipeline)
	x.Labels[LabelKind] = string(x.Spec.Kind)
	if x.Spec.Commit != "" {
		x.Labels[LabelCommit] = x.Spec.Commit
	}
	if x.Spec.Stage != "" {
		x.Labels[LabelStage] = labelValue(x.Spec.Stage)
	}
	x.Spec.ShortCommit = short(x.Spec.Commit)
	status := x.Status
	for attempt := 0; attempt < 10; attempt++ {
		n++
		x.Spec.Number = n
		if x.Spec.Kind == KindRollback {
			x.Spec.DisplayName = RollbackDisplayName(x.Spec.Pipeline, x.Spec.Stage, n)
		} else {
			x.Spec.DisplayName = DisplayName(x.Spec.Pipeline, n)
		}
		x.Name = ObjectName(x.Spec.DisplayName)
		u, err := toUnstructured(x)
		if err != nil {
			return nil, err
		}
		created, err := s.executions().Create(ctx, u, metav1.CreateOptions{FieldManager: FieldManager})
		if apierrors.IsAlreadyExists(err) {
			continue // another writer took n
		}
		if err != nil {
			return nil, fmt.Errorf("create execution %s: %w", x.Spec.DisplayName, err)
		}
		stored, err := executionFrom(created)
		if err != nil {
			return nil, err
		}
		stored.Status = status
		if err := s.writeExecutionStatus(ctx, stored, 3); err != nil {
			s.remember(stored) // it exists, and holds its number, without its status
			return nil, err
		}
		return stored, nil
	}
	return nil, fmt.Errorf("create execution for pipeline %q: no free number", x.Spec.Pipeline)
}

// UpdateExecution writes x's status (its spec does not change after creation) and refreshes
// its resourceVersion and conditions.
func (s *Store) UpdateExecution(ctx context.Context, x *Execution) error {
	return s.writeExecutionStatus(ctx, x, 1)
}

// writeExecutionStatus sets x's conditions from its phase and writes its status, trying up to
// attempts times while the API server fails for reasons other than a conflict.
func (s *Store) writeExecutionStatus(ctx context.Context, x *Execution, attempts int) error {
	x.Status.ObservedGeneration = x.Generation
	executionConditions(x).Apply(&x.Status.Conditions, x.Generation)
	u, err := toUnstructured(x)
	if err != nil {
		return err
	}
	updated, err := updateStatus(ctx, s.executions(), u, attempts)
	if err != nil {
		return fmt.Errorf("update status of execution %s: %w", x.Spec.DisplayName, err)
	}
	x.ResourceVersion = updated.GetResourceVersion()
	s.remember(x)
	if s.observer != nil {
		s.observer.ExecutionWritten(x.DeepCopy())
	}
	return nil
}

// updateStatus writes u's status through the status subresource.
func updateStatus(ctx context.Context, res dynamic.ResourceInterface, u *unstructured.Unstructured, attempts int) (*unstructured.Unstructured, error) {
	for attempt := 1; ; attempt++ {
		updated, err := res.UpdateStatus(ctx, u, metav1.UpdateOptions{FieldManager: FieldManager})
		if err == nil || attempt >= attempts || apierrors.IsConflict(err) || apierrors.IsNotFound(err) || apierrors.IsInvalid(err) {
			return updated, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
		}
	}
}

// GetExecution reads the execution with object name name.
func (s *Store) GetExecution(ctx context.Context, name string) (*Execution, error) {
	u, err := s.executions().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return executionFrom(u)
}

// ListExecutions lists the executions of pipeline (all pipelines when empty), oldest first.
func (s *Store) ListExecutions(ctx context.Context, pipeline string) ([]Execution, error) {
	opts := metav1.ListOptions{}
	if pipeline != "" {
		opts.LabelSelector = labels.Set{LabelPipeline: labelValue(pipeline)}.String()
	}
	list, err := s.executions().List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("list executions: %w", err)
	}
	out := make([]Execution, 0, len(list.Items))
	for i := range list.Items {
		x, err := executionFrom(&list.Items[i])
		if err != nil {
			return nil, err
		}
		if pipeline == "" || x.Spec.Pipeline == pipeline {
			out = append(out, *x)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i].CreationTimestamp, out[j].CreationTimestamp
		if !a.Equal(&b) {
			return a.Before(&b)
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

// WatchExecutions calls fn with the executions of pipeline as they are now, then with each
// change, in order, until fn returns true or ctx ends. Unlike polling, it sees every status an
// execution passes through, however briefly.
func (s *Store) WatchExecutions(ctx context.Context, pipeline string, fn func(*Execution) bool) error {
	w, err := s.executions().Watch(ctx, metav1.ListOptions{LabelSelector: labels.Set{LabelPipeline: labelValue(pipeline)}.String()})
	if err != nil {
		return fmt.Errorf("watch executions of pipeline %q: %w", pipeline, err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-w.ResultChan():
			if !ok {
				return fmt.Errorf("watch executions of pipeline %q: the API server closed the watch", pipeline)
			}
			u, isObject := ev.Object.(*unstructured.Unstructured)
			if !isObject || ev.Type == watch.Deleted {
				continue
			}
			x, err := executionFrom(u)
			if err != nil {
				return err
			}
			if fn(x) {
				return nil
			}
		}
	}
}

// Ledger reads the ledger of a stage, or returns a new, unsaved one.
func (s *Store) Ledger(ctx context.Context, pipeline, stage string) (*StageLedger, error) {
	u, err := s.ledgers().Get(ctx, LedgerName(pipeline, stage), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return s.NewLedger(pipeline, stage), nil
	}
	if err != nil {
		return nil, fmt.Errorf("get ledger of stage %q of pipeline %q: %w", stage, pipeline, err)
	}
	l := &StageLedger{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, l); err != nil {
		return nil, err
	}
	return l, nil
}

// NewLedger returns a new, unsaved ledger of a stage.
func (s *Store) NewLedger(pipeline, stage string) *StageLedger {
	l := &StageLedger{Spec: StageLedgerSpec{Pipeline: pipeline, Stage: stage}}
	l.APIVersion, l.Kind = Group+"/"+Version, "StageLedger"
	l.Name, l.Namespace = LedgerName(pipeline, stage), s.namespace
	l.Labels = map[string]string{LabelPipeline: labelValue(pipeline), LabelStage: labelValue(stage)}
	return l
}

// ListLedgers lists the ledgers of pipeline (of every pipeline when empty).
func (s *Store) ListLedgers(ctx context.Context, pipeline string) ([]StageLedger, error) {
	opts := metav1.ListOptions{}
	if pipeline != "" {
		opts.LabelSelector = labels.Set{LabelPipeline: labelValue(pipeline)}.String()
	}
	list, err := s.ledgers().List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("list ledgers: %w", err)
	}
	out := make([]StageLedger, 0, len(list.Items))
	for i := range list.Items {
		var l StageLedger
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(list.Items[i].Object, &l); err != nil {
			return nil, fmt.Errorf("read ledger %s: %w", list.Items[i].GetName(), err)
		}
		if pipeline == "" || l.Spec.Pipeline == pipeline {
			out = append(out, l)
		}
	}
	return out, nil
}

// SaveLedger writes l's status, creating l first when it is new, and refreshes its
// resourceVersion and conditions. The store's observer gets l itself: the caller must not
// change l after a successful save.
func (s *Store) SaveLedger(ctx context.Context, l *StageLedger) error {
	attempts := 1
	if l.ResourceVersion == "" {
		u, err := toUnstructured(l)
		if err != nil {
			return err
		}
		created, err := s.ledgers().Create(ctx, u, metav1.CreateOptions{FieldManager: FieldManager})
		if err != nil {
			return fmt.Errorf("create ledger of stage %q of pipeline %q: %w", l.Spec.Stage, l.Spec.Pipeline, err)
		}
		l.ResourceVersion, l.Generation, l.UID = created.GetResourceVersion(), created.GetGeneration(), created.GetUID()
		l.CreationTimestamp = created.GetCreationTimestamp()
		attempts = 3 // the ledger exists now: its status must follow
	}
	l.Status.ObservedGeneration = l.Generation
	ledgerConditions(l).Apply(&l.Status.Conditions, l.Generation)
	u, err := toUnstructured(l)
	if err != nil {
		return err
	}
	saved, err := updateStatus(ctx, s.ledgers(), u, attempts)
	if err != nil {
		return fmt.Errorf("save ledger of stage %q of pipeline %q: %w", l.Spec.Stage, l.Spec.Pipeline, err)
	}
	l.ResourceVersion = saved.GetResourceVersion()
	if s.observer != nil {
		s.observer.LedgerWritten(l)
	}
	return nil
}

func executionFrom(u *unstructured.Unstructured) (*Execution, error) {
	x := &Execution{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, x); err != nil {
		return nil, fmt.Errorf("read execution %s: %w", u.GetName(), err)
	}
	return x, nil
}

func toUnstructured(obj any) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	return &unstructured.Unstructured{Object: m}, nil
}

// labelValue makes s fit a label value (63 characters of [A-Za-z0-9._-]).
func labelValue(s string) string { return ssa.LabelValue(s) }
