package reconciler

import (
	"encoding/json"
	"fmt"
)

// RecordObserver hears of every Execution and StageLedger the store writes, after the write:
// the daemon keeps the Pipeline objects up to date with it. Its methods run on the writer's
// goroutine and must return quickly.
type RecordObserver interface {
	// ExecutionWritten gets a copy of the execution, to keep.
	ExecutionWritten(*Execution)
	// LedgerWritten gets the ledger the reconciler keeps as the stage's newest: it may keep
	// it, but must not change it (the reconciler replaces it on the next write, never
	// changes it).
	LedgerWritten(*StageLedger)
}

// DeepCopy returns a copy of x that shares nothing with it (times to the second, as stored).
func (x *Execution) DeepCopy() *Execution { return deepCopy(x) }

// DeepCopy returns a copy of l that shares nothing with it (times to the second, as stored).
func (l *StageLedger) DeepCopy() *StageLedger { return deepCopy(l) }

// deepCopy copies v through JSON, which every record type round-trips: no generated code to
// keep in step with the types.
func deepCopy[T any](v *T) *T {
	data, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("copy %T: %v", v, err)) // plain data types always marshal
	}
	out := new(T)
	if err := json.Unmarshal(data, out); err != nil {
		panic(fmt.Sprintf("copy %T: %v", v, err))
	}
	return out
}
