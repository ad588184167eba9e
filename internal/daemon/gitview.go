package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/gitsource"
	"ebb.dev/ebb/planner"
	"ebb.dev/ebb/planner/strictyaml"
	"ebb.dev/ebb/reconciler"
)

// Ready reasons of a pipeline whose file is wrong.
const (
	reasonInvalid      = "InvalidPipeline"
	reasonRenderFailed = "RenderFailed"
)

// gitView is what one planned commit says of each pipeline, for its Pipeline object: the
// pipelines found, their stages and planned releases, and the errors of those that could
// not be planned, each on the pipeline it belongs to.
type gitView struct {
	commit string
	at     metav1.Time
	// pipelines by object name (reconciler.ObjectName of the pipeline's name).
	pipelines map[string]*gitPipeline
}

// gitPipeline is one pipeline at the view's commit.
type gitPipeline struct {
	name string
	file string
	// enabled is nil when the file does not say (it does not parse).
	enabled *bool
	// derived says the name comes from the file's base name: its metadata.name could not be
	// read.
	derived bool
	// stages, when the pipeline loaded; nil for a file that did not.
	stages []reconciler.PipelineStage
	// planned maps each stage to the hash of the release planned for it (enabled pipelines
	// whose stages all rendered).
	planned map[string]string
	errs    strictyaml.ErrorList
	reason  string
}

// newGitView builds the view of snap from the planner's results: the pipelines that loaded,
// Load's error, the releases that rendered and RenderAll's error. It returns nil when the
// repository itself could not be read: then nothing is known of any pipeline, and no
// Pipeline may be taken for removed.
func newGitView(snap *gitsource.Snapshot, pipelines []*planner.Pipeline, loadErr error, releases []*planner.Release, renderErr error) *gitView {
	var located strictyaml.ErrorList
	if loadErr != nil && !errors.As(loadErr, &located) {
		return nil
	}
	v := &gitView{commit: snap.Commit, at: metav1.NewTime(time.Now().Truncate(time.Second)), pipelines: map[string]*gitPipeline{}}
	for _, p := range pipelines {
		gp := v.pipeline(p.Metadata.Name, p.File)
		enabled := p.Spec.Enabled
		gp.enabled = &enabled
		gp.stages = []reconciler.PipelineStage{}
		for _, s := range p.Spec.Stages {
			gp.stages = append(gp.stages, reconciler.PipelineStage{Name: s.Name, Cluster: s.Cluster, Namespace: s.Namespace})
		}
	}
	v.addLoadErrors(snap.FS, located)
	var stages planner.RenderErrors
	if errors.As(renderErr, &stages) {
		for _, e := range stages {
			gp := v.pipeline(e.Pipeline, e.Err.File)
			gp.errs = append(gp.errs, e.Err)
			if gp.reason == "" {
				gp.reason = reasonRenderFailed
			}
		}
	}
	rendered := map[string]map[string]string{}
	for _, rel := range releases {
		if rendered[rel.Pipeline] == nil {
			rendered[rel.Pipeline] = map[string]string{}
		}
		rendered[rel.Pipeline][rel.Stage] = rel.Hash
	}
	for _, gp := range v.pipelines {
		if len(gp.errs) == 0 && gp.stages != nil && len(rendered[gp.name]) == len(gp.stages) {
			gp.planned = rendered[gp.name]
		}
	}
	return v
}

// addLoadErrors puts each file's errors on the pipelines the file defines. A file with an
// error yields none of its pipelines, so each of them gets all of the file's errors. The
// names are read from the file as far as possible; a file whose names cannot be read gets a
// pipeline named after its base name.
func (v *gitView) addLoadErrors(fsys fs.FS, errs strictyaml.ErrorList) {
	byFile := map[string]strictyaml.ErrorList{}
	var files []string
	for _, e := range errs {
		if byFile[e.File] == nil {
			files = append(files, e.File)
		}
		byFile[e.File] = append(byFile[e.File], e)
	}
	for _, file := range files {
		var names []string
		if data, err := fs.ReadFile(fsys, file); err == nil {
			names = planner.NamesIn(data)
		}
		derived := len(names) == 0
		if derived {
			names = []string{strings.TrimSuffix(path.Base(file), path.Ext(file))}
		}
		for _, name := range names {
			gp := v.pipeline(name, file)
			gp.derived = gp.derived || derived
			gp.errs = append(gp.errs, byFile[file]...)
			gp.reason = reasonInvalid
		}
	}
}

// pipeline returns the view's pipeline named name, adding it (found in file) if missing.
func (v *gitView) pipeline(name, file string) *gitPipeline {
	key := reconciler.ObjectName(name)
	if key == "" {
		key, name = "unnamed", "unnamed" // a file named ".yaml"
	}
	gp := v.pipelines[key]
	if gp == nil {
		gp = &gitPipeline{name: name, file: file}
		v.pipelines[key] = gp
	}
	return gp
}

// signature is what the pipeline is in Git, leaving out the commit: two commits with the same
// signature plan the pipeline the same way.
func (gp *gitPipeline) signature() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\x00%s\x00%v\x00%s\x00", gp.name, gp.file, gp.enabled != nil && *gp.enabled, gp.reason)
	for _, st := range gp.stages {
		fmt.Fprintf(&b, "stage %s %s %s=%s\x00", st.Name, st.Cluster, st.Namespace, gp.planned[st.Name])
	}
	for _, e := range gp.errs {
		b.WriteString(e.Error())
		b.WriteByte(0)
	}
	return b.String()
}
