package planner

import (
	"sort"

	"ebb.dev/ebb/planner/strictyaml"
)

// StageError is one stage of one pipeline that did not render, located at the field that set
// its manifests. It names the pipeline, so a caller can report the error on that pipeline
// alone (a file may hold several pipelines).
type StageError struct {
	Pipeline string
	Stage    string
	Err      *strictyaml.Error
}

// Error is the located message, `file:line:col: message`.
func (e *StageError) Error() string { return e.Err.Error() }

// Unwrap returns the located error.
func (e *StageError) Unwrap() error { return e.Err }

// RenderErrors are the stages RenderAll could not render, in file and position order. They
// read as a strictyaml.ErrorList (errors.As with a *strictyaml.ErrorList target fills it), so
// a caller that only wants the located messages treats them like Load's errors.
type RenderErrors []*StageError

// Error joins the located messages one per line, as strictyaml.ErrorList does.
func (l RenderErrors) Error() string { return l.Located().Error() }

// Located returns the located errors alone.
func (l RenderErrors) Located() strictyaml.ErrorList {
	out := make(strictyaml.ErrorList, len(l))
	for i, e := range l {
		out[i] = e.Err
	}
	return out
}

// As lets errors.As read RenderErrors as a strictyaml.ErrorList.
func (l RenderErrors) As(target any) bool {
	if list, ok := target.(*strictyaml.ErrorList); ok {
		*list = l.Located()
		return true
	}
	return false
}

// Err returns nil for an empty list, so `return l.Err()` never yields a typed nil error.
func (l RenderErrors) Err() error {
	if len(l) == 0 {
		return nil
	}
	return l
}

// sort orders the errors by file, line and column, as strictyaml.ErrorList.Sort does.
func (l RenderErrors) sort() {
	sort.SliceStable(l, func(i, j int) bool {
		a, b := l[i].Err, l[j].Err
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Pos.Line != b.Pos.Line {
			return a.Pos.Line < b.Pos.Line
		}
		return a.Pos.Col < b.Pos.Col
	})
}
