package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"

	"ebb.dev/ebb/internal/ssa"
	"ebb.dev/ebb/reconciler"
)

// screen redraws a view: on a terminal it clears the screen first; elsewhere (a pipe, a log)
// it writes each new view after a blank line, and only when it changed.
type screen struct {
	w    io.Writer
	tty  bool
	last []byte
}

func newScreen(w io.Writer) *screen {
	f, ok := w.(*os.File)
	return &screen{w: w, tty: ok && term.IsTerminal(int(f.Fd()))}
}

func (s *screen) draw(view []byte) {
	if bytes.Equal(view, s.last) {
		return
	}
	switch {
	case s.tty:
		_, _ = io.WriteString(s.w, "\x1b[H\x1b[2J")
	case s.last != nil:
		_, _ = io.WriteString(s.w, "\n")
	}
	_, _ = s.w.Write(view)
	s.last = view
}

// watchTable draws the executions table (of pipeline, or all) and redraws it on each change,
// until no execution is left running.
func watchTable(cmd *cobra.Command, rf recordFlags, pipeline string, wide bool) error {
	client, err := rf.client()
	if err != nil {
		return err
	}
	opts := metav1.ListOptions{}
	if pipeline != "" {
		opts.LabelSelector = labels.Set{reconciler.LabelPipeline: ssa.LabelValue(pipeline)}.String()
	}
	scr := newScreen(cmd.OutOrStdout())
	return watchRecords(cmd.Context(), client.Resource(reconciler.ExecutionResource).Namespace(rf.namespace), opts, func(all map[string]*reconciler.Execution) bool {
		list := make([]reconciler.Execution, 0, len(all))
		done := true
		for _, x := range all {
			if pipeline != "" && x.Spec.Pipeline != pipeline {
				continue
			}
			list = append(list, *x)
			done = done && x.Status.Phase.Terminal()
		}
		sort.SliceStable(list, func(i, j int) bool {
			a, b := list[i].CreationTimestamp, list[j].CreationTimestamp
			if !a.Equal(&b) {
				return a.Before(&b)
			}
			return list[i].Name < list[j].Name
		})
		var b bytes.Buffer
		printExecutions(&b, list, wide, time.Now())
		scr.draw(b.Bytes())
		return done
	})
}

// watchTree draws one execution's tree and redraws it on each change, until it ends.
func watchTree(cmd *cobra.Command, rf recordFlags, display string) error {
	client, err := rf.client()
	if err != nil {
		return err
	}
	name := reconciler.ObjectName(display)
	res := client.Resource(reconciler.ExecutionResource).Namespace(rf.namespace)
	if _, err := res.Get(cmd.Context(), name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return fmt.Errorf("execution %s not found in namespace %s", display, rf.namespace)
	} else if err != nil {
		return err
	}
	scr := newScreen(cmd.OutOrStdout())
	opts := metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()}
	return watchRecords(cmd.Context(), res, opts, func(all map[string]*reconciler.Execution) bool {
		x, ok := all[name]
		if !ok {
			return false
		}
		var b bytes.Buffer
		printExecutionTree(&b, x, time.Now())
		scr.draw(b.Bytes())
		return x.Status.Phase.Terminal()
	})
}

// watchRecords lists the executions opts select, calls draw with them, then watches them and
// calls draw after each change, until draw returns true. A watch the API server ends is
// started again from the last version seen.
func watchRecords(ctx context.Context, res dynamic.ResourceInterface, opts metav1.ListOptions, draw func(map[string]*reconciler.Execution) bool) error {
	list, err := res.List(ctx, opts)
	if err != nil {
		return fmt.Errorf("list executions: %w", err)
	}
	all := map[string]*reconciler.Execution{}
	for i := range list.Items {
		if x, err := executionOf(&list.Items[i]); err == nil {
			all[x.Name] = x
		}
	}
	if draw(all) {
		return nil
	}
	version := list.GetResourceVersion()
	for {
		wopts := opts
		wopts.ResourceVersion, wopts.AllowWatchBookmarks = version, true
		w, err := res.Watch(ctx, wopts)
		if err != nil {
			return fmt.Errorf("watch executions: %w", err)
		}
		for ev := range w.ResultChan() {
			if ev.Type == watch.Error {
				w.Stop()
				return fmt.Errorf("watch executions: %v", apierrors.FromObject(ev.Object))
			}
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			version = u.GetResourceVersion()
			switch ev.Type {
			case watch.Bookmark:
				continue
			case watch.Deleted:
				delete(all, u.GetName())
			default:
				x, err := executionOf(u)
				if err != nil {
					continue
				}
				all[x.Name] = x
			}
			if draw(all) {
				w.Stop()
				return nil
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

func executionOf(u *unstructured.Unstructured) (*reconciler.Execution, error) {
	x := &reconciler.Execution{}
	return x, runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, x)
}
