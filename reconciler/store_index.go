package reconciler

import (
	"context"
	"sort"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// executionIndex is every execution of the records namespace as the reconciler last listed,
// created or wrote it, in summary (name, spec, status phase and times: a few hundred bytes,
// not the stages, tasks and history). The reconciler (the leader) is the only writer of executions' specs
// and statuses, so once it listed them all at Resume, the executions of one pipeline (to
// number a new one, or to find whether a commit ran before) need no request: a commit costs
// what it changes. Others write only metadata (the notifier's annotations) or an ended
// execution's comment (write-back), which the index does not need.
type executionIndex struct {
	mu         sync.Mutex
	byPipeline map[string]map[string]Execution // pipeline -> object name -> execution
}

// indexExecutions makes all, every execution listed, the store's index: from then on the
// store answers executionsOf from memory and keeps the index up to date as it writes.
func (s *Store) indexExecutions(all []Execution) {
	idx := &executionIndex{byPipeline: map[string]map[string]Execution{}}
	for _, x := range all {
		idx.put(x)
	}
	s.idx.Store(idx)
}

func (idx *executionIndex) put(x Execution) {
	x = summary(x)
	idx.mu.Lock()
	defer idx.mu.Unlock()
	m := idx.byPipeline[x.Spec.Pipeline]
	if m == nil {
		m = map[string]Execution{}
		idx.byPipeline[x.Spec.Pipeline] = m
	}
	m[x.Name] = x
}

// remember records x, as just written, in the index, if there is one.
func (s *Store) remember(x *Execution) {
	if idx := s.idx.Load(); idx != nil {
		idx.put(*x)
	}
}

// summary is what the index keeps of x.
func summary(x Execution) Execution {
	return Execution{
		TypeMeta:   x.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: x.Name, Namespace: x.Namespace, CreationTimestamp: x.CreationTimestamp, ResourceVersion: x.ResourceVersion},
		Spec:       x.Spec,
		Status:     ExecutionStatus{Phase: x.Status.Phase, Stage: x.Status.Stage, StartedAt: x.Status.StartedAt.DeepCopy(), FinishedAt: x.Status.FinishedAt.DeepCopy()},
	}
}

// executionsOf returns the executions of pipeline, oldest first: from the index when there is
// one (summaries: spec, phase and times), else from the API server.
func (s *Store) executionsOf(ctx context.Context, pipeline string) ([]Execution, error) {
	idx := s.idx.Load()
	if idx == nil {
		return s.ListExecutions(ctx, pipeline)
	}
	idx.mu.Lock()
	out := make([]Execution, 0, len(idx.byPipeline[pipeline]))
	for _, x := range idx.byPipeline[pipeline] {
		out = append(out, x)
	}
	idx.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i].CreationTimestamp, out[j].CreationTimestamp
		if !a.Equal(&b) {
			return a.Before(&b)
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}
