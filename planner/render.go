package planner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/filters/imagetag"
	"sigs.k8s.io/kustomize/api/filters/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/api/resource"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/kustomize/kyaml/openapi"
	kyaml "sigs.k8s.io/kustomize/kyaml/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	"ebb.dev/ebb/planner/strictyaml"
)

// scratchRoot holds the kustomization ebb writes for a plain YAML directory. It is outside
// repoRoot, so it is never mistaken for the user's files.
const scratchRoot = "/ebb"

// kustomizeMu guards kustomize's process-wide OpenAPI schema (kyaml/openapi), the only state
// its builds share. Once parsed, builds only read it, and run at once under the read lock. A
// kustomization's `openapi` field changes it and marks it to be parsed again, lazily, while
// other builds read it unlocked: builds that may set it hold the write lock.
//
// The lock is taken by trying, not waiting: a writer waiting in Lock would hold up every
// reader behind it, and a build past its deadline may hold the lock for long. A build that
// cannot have it by its deadline gives up, and no build waits behind another's wait.
var (
	kustomizeMu sync.RWMutex
	parseSchema sync.Once
)

// lockRetry is how often a build tries the lock again.
const lockRetry = 2 * time.Millisecond

// lockKustomize locks for one build, exclusively when the build may set the schema, and
// returns the unlock; it gives up when ctx ends first.
func lockKustomize(ctx context.Context, setsSchema bool) (unlock func(), err error) {
	if !setsSchema {
		// Parse the default schema before any builds run at once: kustomize parses it on
		// first use, while other builds may read it unlocked.
		parseSchema.Do(func() {
			kustomizeMu.Lock()
			defer kustomizeMu.Unlock()
			openapi.Schema()
		})
		if err := tryLock(ctx, kustomizeMu.TryRLock); err != nil {
			return nil, err
		}
		return kustomizeMu.RUnlock, nil
	}
	if err := tryLock(ctx, kustomizeMu.TryLock); err != nil {
		return nil, err
	}
	return func() {
		// Put the default schema back, parsed: kustomize would keep this build's for the
		// builds after it that set none, and parse it lazily while they read it.
		openapi.ResetOpenAPI()
		openapi.Schema()
		kustomizeMu.Unlock()
	}, nil
}

// tryLock calls try until it succeeds or ctx ends.
func tryLock(ctx context.Context, try func() bool) error {
	for !try() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(lockRetry):
		}
	}
	return nil
}

// Renderer renders stages into releases and remembers, per pipeline stage, the inputs of the
// last render: a stage whose inputs did not change is not rendered again. Its methods may be
// called from several goroutines at once.
//
// Each render has its own deadline (Limits.RenderTimeout) and runs in one of a fixed number of
// slots, as many as there are CPUs: the slots bound the memory of the builds running at once,
// and the deadline bounds how long anyone waits for one. A build past its deadline cannot be
// stopped (kustomize takes no context; it only stops at its next look at the repository), so
// it is left to finish in its slot, and the same inputs are not built again: a slow manifest
// costs its pipeline a failed render, once per change, and no other pipeline more than a slot.
type Renderer struct {
	opts   Options
	limits Limits
	slots  chan struct{}

	mu      sync.Mutex
	cache   map[string]*cacheEntry
	running map[string]bool // stages whose build outlived its deadline and still runs
	stats   RenderStats
}

// RenderStats count renders, for logs, metrics and tests.
type RenderStats struct {
	// Rendered is how many releases kustomize built.
	Rendered int
	// Reused is how many releases came from the cache because their inputs were unchanged.
	Reused int
	// TimedOut is how many renders failed for the deadline: at their own, or because a build
	// of the stage's same inputs outlived its own.
	TimedOut int
}

type cacheEntry struct {
	params  string
	ops     []fsOp
	release *Release
	// timedOut marks inputs whose build outlived its deadline: they fail at once.
	timedOut bool
}

// NewRenderer returns a Renderer with an empty cache.
func NewRenderer(opts Options) *Renderer {
	return &Renderer{
		opts: opts, limits: opts.Limits.orDefaults(), slots: make(chan struct{}, runtime.GOMAXPROCS(0)),
		cache: map[string]*cacheEntry{}, running: map[string]bool{},
	}
}

// Stats returns the counts so far.
func (r *Renderer) Stats() RenderStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// renderParams are the inputs of a render besides the files.
type renderParams struct {
	Pipeline  string
	Stage     string
	Cluster   string
	Namespace string
	Manifests string
	Helm      *HelmSource
	Service   string
	Image     string
	Tag       string
	Values    Values
}

func newRenderParams(p *Pipeline, s *Stage) renderParams {
	return renderParams{
		Pipeline: p.Metadata.Name, Stage: s.Name, Cluster: s.Cluster, Namespace: s.Namespace,
		Manifests: path.Clean(p.ManifestsOf(s)), Helm: p.HelmOf(s), Service: p.Spec.Service,
		Image: p.Spec.Input.Image, Tag: p.Spec.Input.Tag, Values: p.Spec.Input.Values,
	}
}

func (rp renderParams) key() string {
	data, _ := json.Marshal(rp) // map keys are sorted: the key is stable
	return string(data)
}

// Render builds the release of one stage of a validated pipeline from a repository snapshot.
// The release is shared with the cache and must not be modified.
func (r *Renderer) Render(repo *Repo, p *Pipeline, stage string) (*Release, error) {
	s := p.StageNamed(stage)
	if s == nil {
		return nil, fmt.Errorf("render pipeline %q: no stage %q", p.Metadata.Name, stage)
	}
	rel, err := r.render(repo, newRenderParams(p, s))
	if err != nil {
		return nil, fmt.Errorf("render stage %q of pipeline %q: %w", stage, p.Metadata.Name, err)
	}
	return rel, nil
}

// RenderAll renders every stage of every pipeline, as many at once as there are CPUs, and
// returns the releases that rendered, in pipeline and stage order. A stage that fails does
// not stop the others, nor does one that is slow: each render has its own deadline. A failed
// stage's error is located at the manifest that exceeded a limit, or else at the field that
// set its manifests, and all of them are returned as RenderErrors, which name each failed
// stage's pipeline and also read as a strictyaml.ErrorList.
func (r *Renderer) RenderAll(repo *Repo, pipelines []*Pipeline) ([]*Release, error) {
	index := make(map[*Pipeline]int, len(pipelines))
	for i, p := range pipelines {
		index[p] = i
	}
	var (
		mu       sync.Mutex
		releases = make([][]*Release, len(pipelines))
		errs     RenderErrors
	)
	r.RenderEach(repo, pipelines, func(p *Pipeline, rels []*Release, err error) {
		mu.Lock()
		defer mu.Unlock()
		releases[index[p]] = rels
		var failed RenderErrors
		if errors.As(err, &failed) {
			errs = append(errs, failed...)
		}
	})
	var rendered []*Release
	for _, rels := range releases {
		rendered = append(rendered, rels...)
	}
	errs.sort()
	return rendered, errs.Err()
}

// RenderEach renders every stage of every pipeline as RenderAll does, and calls done with
// each pipeline as soon as all its stages have rendered or failed: its releases that
// rendered, in stage order, and its failed stages as RenderErrors (nil when none failed). A
// pipeline that renders fast is thus handed on while a slow one still renders.
//
// A pipeline's stages render one after the other, and pipelines side by side, as many at once
// as there are CPUs: a pipeline whose every stage runs into the deadline holds one slot, not
// all of them, whatever its number of stages and wherever it sorts. done runs on the
// rendering goroutines, several at once; RenderEach returns once every call returned.
func (r *Renderer) RenderEach(repo *Repo, pipelines []*Pipeline, done func(p *Pipeline, releases []*Release, err error)) {
	forEach(len(pipelines), runtime.GOMAXPROCS(0), func(i int) {
		p := pipelines[i]
		var rendered []*Release
		var errs RenderErrors
		for s := range p.Spec.Stages {
			rel, err := r.Render(repo, p, p.Spec.Stages[s].Name)
			if err != nil {
				errs = append(errs, &StageError{Pipeline: p.Metadata.Name, Stage: p.Spec.Stages[s].Name, Err: locate(p, s, err)})
				continue
			}
			rendered = append(rendered, rel)
		}
		done(p, rendered, errs.Err())
	})
}

// locate places a stage's render error: at the manifest that exceeded a limit, or else at the
// field that set the stage's manifests. The message is one line, as every located error is:
// kustomize's may quote a manifest, newlines and all.
func locate(p *Pipeline, stage int, err error) *strictyaml.Error {
	var at *strictyaml.Error
	if errors.As(err, &at) {
		return &strictyaml.Error{File: at.File, Pos: at.Pos,
			Msg: oneLine(fmt.Sprintf("render stage %q of pipeline %q: %s", p.Spec.Stages[stage].Name, p.Metadata.Name, at.Msg))}
	}
	return p.errorAt(p.manifestsField(stage), "%s", oneLine(err.Error()))
}

var lineBreakRE = regexp.MustCompile(`[ \t]*\r?\n[ \t]*`)

// oneLine joins the lines of a message with spaces.
func oneLine(msg string) string {
	return strings.TrimSpace(lineBreakRE.ReplaceAllString(msg, " "))
}

// forEach calls fn(0) … fn(n-1) on up to workers goroutines and returns when all are done.
func forEach(n, workers int, fn func(i int)) {
	workers = min(workers, n)
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				fn(i)
			}
		})
	}
	wg.Wait()
}

// render returns the cached release when its inputs are unchanged, and builds it otherwise,
// within the render's deadline. Renders of a snapshot may run at once: each has its own view
// of the shared files.
func (r *Renderer) render(repo *Repo, params renderParams) (*Release, error) {
	mem, err := repo.memFSWith(r.limits.MaxFileBytes)
	if err != nil {
		return nil, err
	}
	cacheKey, paramsKey := params.Pipeline+"/"+params.Stage, params.key()
	if rel, err, ok := r.cached(cacheKey, paramsKey, mem); ok {
		return rel, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.limits.RenderTimeout)
	defer cancel()
	f, err := r.start(ctx, cacheKey)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	fsys := newRenderFS(mem).limited(repo, r.limits, deadline)
	go r.build(ctx, f, fsys, params, paramsKey, repo.setsSchema || r.opts.AllowRemoteBases)
	select {
	case res := <-f.done:
		return r.finished(cacheKey, paramsKey, fsys, res)
	case <-ctx.Done():
		return r.abandon(cacheKey, paramsKey, fsys, f)
	}
}

// flight is one build running in a slot.
type flight struct {
	key  string
	done chan buildResult // buffered: the build never waits for its caller
	// abandoned says the caller stopped waiting at the deadline; guarded by Renderer.mu.
	abandoned bool
}

type buildResult struct {
	rel   *Release
	err   error
	built bool // kustomize ran; false when the lock was not had in time
}

// start takes a slot for a build of the stage key, or fails when the stage's previous build
// still runs past its deadline or no slot frees up before ctx ends.
func (r *Renderer) start(ctx context.Context, key string) (*flight, error) {
	r.mu.Lock()
	running := r.running[key]
	r.mu.Unlock()
	if running {
		r.countTimeout()
		return nil, fmt.Errorf("the stage's previous render is still running, past its deadline of %s (limits.renderTimeout); it is tried again once that one ends", r.limits.RenderTimeout)
	}
	select {
	case r.slots <- struct{}{}:
		return &flight{key: key, done: make(chan buildResult, 1)}, nil
	case <-ctx.Done():
		r.countTimeout()
		return nil, fmt.Errorf("no render could start within %s (limits.renderTimeout): all %d render slots are taken by other renders", r.limits.RenderTimeout, cap(r.slots))
	}
}

// build runs kustomize for one flight and hands the result over, or, when its caller left at
// the deadline, remembers the inputs as too slow. It frees the slot.
func (r *Renderer) build(ctx context.Context, f *flight, fsys *renderFS, params renderParams, paramsKey string, exclusive bool) {
	defer func() { <-r.slots }()
	var res buildResult
	unlock, err := lockKustomize(ctx, exclusive)
	if err != nil {
		res.err = err
	} else {
		res.rel, res.err = safeBuild(fsys, params)
		res.built = true
		unlock()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !f.abandoned {
		f.done <- res
		return
	}
	delete(r.running, f.key)
	if res.built {
		r.rememberTimedOut(f.key, paramsKey, fsys)
	}
}

// rememberTimedOut remembers the inputs of a build that ran into its deadline, so that they
// fail at once until they change, however the build ended: abandoned by its caller, or
// handed back stopped at a look at the repository. The inputs are what the build read
// before its deadline; the time it took was spent on them. A build that read nothing before
// its deadline spent its time before it could start (waiting for kustomize, on a busy
// machine): nothing is known of its inputs, and they are built again next time. Called with
// r.mu held.
func (r *Renderer) rememberTimedOut(cacheKey, paramsKey string, fsys *renderFS) {
	if fsys.looked == 0 {
		return
	}
	r.cache[cacheKey] = &cacheEntry{params: paramsKey, ops: fsys.ops, timedOut: true}
}

// finished caches and returns a build's result.
func (r *Renderer) finished(cacheKey, paramsKey string, fsys *renderFS, res buildResult) (*Release, error) {
	if errors.Is(res.err, errPastDeadline) || errors.Is(res.err, context.DeadlineExceeded) {
		// Stopped at a look at the repository, or waiting for the lock.
		r.mu.Lock()
		r.stats.TimedOut++
		if res.built {
			r.rememberTimedOut(cacheKey, paramsKey, fsys)
		}
		r.mu.Unlock()
		return nil, r.timeoutError()
	}
	if res.err != nil {
		return nil, res.err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.Rendered++
	r.cache[cacheKey] = &cacheEntry{params: paramsKey, ops: fsys.ops, release: res.rel}
	return res.rel, nil
}

// abandon stops waiting for a flight at its deadline, unless it just finished.
func (r *Renderer) abandon(cacheKey, paramsKey string, fsys *renderFS, f *flight) (*Release, error) {
	r.mu.Lock()
	select {
	case res := <-f.done:
		r.mu.Unlock()
		return r.finished(cacheKey, paramsKey, fsys, res)
	default:
	}
	f.abandoned = true
	r.running[f.key] = true
	r.stats.TimedOut++
	r.mu.Unlock()
	return nil, r.timeoutError()
}

func (r *Renderer) countTimeout() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.TimedOut++
}

func (r *Renderer) timeoutError() error {
	return fmt.Errorf("the render took longer than %s (limits.renderTimeout)", r.limits.RenderTimeout)
}

// cached returns the cached result of a stage if its parameters and files are unchanged: its
// release, or, for inputs whose build outlived its deadline, that error.
func (r *Renderer) cached(cacheKey, paramsKey string, mem filesys.FileSystem) (*Release, error, bool) {
	r.mu.Lock()
	e := r.cache[cacheKey]
	r.mu.Unlock()
	if e == nil || e.params != paramsKey || !replay(e.ops, mem) {
		return nil, nil, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.timedOut {
		r.stats.TimedOut++
		return nil, fmt.Errorf("%w with these same inputs; it is tried again when they change", r.timeoutError()), true
	}
	r.stats.Reused++
	return e.release, nil, true
}

// safeBuild is build that turns a panic into the render's error: kustomize reads what anyone
// with push access wrote, and a panic in its goroutine would stop every pipeline.
func safeBuild(fsys *renderFS, params renderParams) (rel *Release, err error) {
	defer func() {
		if p := recover(); p != nil {
			rel, err = nil, fmt.Errorf("kustomize failed on these manifests: %v", p)
		}
	}()
	return build(fsys, params)
}

// build runs the named steps of a render: kustomize with the stage's namespace and labels,
// the image injected into the service's Deployment, values substituted, objects ordered and
// hashed.
func build(fsys *renderFS, params renderParams) (*Release, error) {
	var (
		m     resmap.ResMap
		notes []string
		err   error
	)
	if params.Helm != nil {
		m, notes, err = runHelm(fsys, params)
	} else {
		m, err = runKustomize(fsys, params)
	}
	if fsys.exceeded != nil {
		// kustomize wraps the read's error in its own words; the limit is the cause.
		return nil, fsys.exceeded
	}
	if err != nil {
		return nil, err
	}
	deploy, svc, err := findService(m, params.Service)
	if err != nil {
		return nil, err
	}
	if err := injectImage(deploy, params.Image, params.Tag); err != nil {
		return nil, err
	}
	objects, err := toObjects(m, params.Values)
	if err != nil {
		return nil, err
	}
	sortObjects(objects)
	kept, err := ObjectsOf(objects)
	if err != nil {
		return nil, err
	}
	rel := &Release{
		Pipeline: params.Pipeline, Stage: params.Stage, Cluster: params.Cluster, Namespace: params.Namespace,
		Deployment: deploy.GetName(), Objects: kept, Hash: kept.hash(), Notes: notes,
	}
	if svc != nil {
		rel.Service = svc.GetName()
	}
	rel.Images = deploymentImages(findObject(objects, "Deployment", deploy.GetName()))
	if err := checkImageUsed(rel, params.Image); err != nil {
		return nil, err
	}
	return rel, nil
}

// runKustomize builds the stage's manifests with the stage's namespace and ebb's labels,
// with kustomize's own semantics. A kustomization gets the namespace added to its own file
// for the build (a stand-in; a wrapping kustomization would cost a third more time). A
// directory without kustomization is a plain YAML directory: ebb writes one that lists its
// YAML files.
//
// The labels are set after the build, by kustomize's own label filter with the field spec
// its `labels` field uses when selectors and templates are left out: metadata only, as
// selectors are immutable. Set through the kustomization, they cost a third of the build,
// as kustomize then also configures a commonLabels transformer with every selector field
// it knows, and encodes and decodes that configuration for each build.
func runKustomize(fsys *renderFS, params renderParams) (resmap.ResMap, error) {
	src := path.Join(repoRoot, params.Manifests)
	resources, plain, err := stageResources(fsys, src)
	if err != nil {
		return nil, err
	}
	opts := krusty.MakeDefaultOptions()
	dir := src
	if plain {
		dir = path.Join(scratchRoot, params.Pipeline, params.Stage)
		if err := writeScratch(fsys, dir, wrapperKustomization(dir, resources, params)); err != nil {
			return nil, err
		}
		// The files of a plain directory sit beside, not below, the wrapping kustomization.
		// The filesystem holds nothing but the repository, so this reaches nothing more.
		opts.LoadRestrictions = types.LoadRestrictionsNone
	} else if err := standIn(fsys, resources[0], params); err != nil {
		return nil, err
	}
	m, err := krusty.MakeKustomizer(opts).Run(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %w", params.Manifests, cleanKustomizeError(err))
	}
	if err := m.ApplyFilter(labels.Filter{
		Labels:  map[string]string{LabelPipeline: params.Pipeline, LabelStage: params.Stage},
		FsSlice: types.FsSlice{{Path: "metadata/labels", CreateIfNotPresent: true}},
	}); err != nil {
		return nil, fmt.Errorf("label objects: %w", err)
	}
	return m, nil
}

func writeScratch(fsys *renderFS, dir string, kustomization []byte) error {
	if err := fsys.MkdirAll(dir); err != nil {
		return err
	}
	return fsys.WriteFile(path.Join(dir, "kustomization.yaml"), kustomization)
}

// standIn replaces a kustomization file, for this render, with a copy that also sets the
// stage's namespace. Its original content is what the cache notes.
func standIn(fsys *renderFS, file string, params renderParams) error {
	original, err := fsys.ReadFile(file)
	if err != nil {
		return err
	}
	var k map[string]any
	if err := sigsyaml.Unmarshal(original, &k); err != nil {
		return fmt.Errorf("kustomize %s: read %s: %w", params.Manifests, strings.TrimPrefix(file, repoRoot+"/"), err)
	}
	if k == nil {
		k = map[string]any{}
	}
	k["namespace"] = params.Namespace
	changed, err := sigsyaml.Marshal(k)
	if err != nil {
		return err
	}
	fsys.standIn(file, changed)
	return nil
}

// stageResources returns the kustomization file of the manifests directory, or else, for a
// plain directory, the YAML files in it (ebb's own files left out).
func stageResources(fsys *renderFS, src string) ([]string, bool, error) {
	for _, name := range kustomizationFiles {
		if file := path.Join(src, name); fsys.Exists(file) {
			return []string{file}, false, nil
		}
	}
	names, err := fsys.ReadDir(src)
	if err != nil {
		return nil, false, fmt.Errorf("read manifests directory: %w", cleanKustomizeError(err))
	}
	sort.Strings(names)
	var files []string
	for _, n := range names {
		file := path.Join(src, n)
		ext := path.Ext(n)
		if (ext != ".yaml" && ext != ".yml" && ext != ".json") || fsys.IsDir(file) {
			continue
		}
		data, err := fsys.peek(file)
		if err != nil {
			return nil, false, err
		}
		if IsPipelineFile(data) || len(strings.TrimSpace(string(data))) == 0 {
			continue
		}
		files = append(files, file)
	}
	if len(files) == 0 {
		return nil, false, fmt.Errorf("manifests directory %s has no kustomization and no YAML files", strings.TrimPrefix(src, repoRoot+"/"))
	}
	return files, true, nil
}

// wrapperKustomization lists a plain directory's files and sets the stage's namespace on
// them, with kustomize's own semantics.
func wrapperKustomization(dir string, resources []string, params renderParams) []byte {
	var b strings.Builder
	b.WriteString("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n")
	fmt.Fprintf(&b, "namespace: %q\n", params.Namespace)
	b.WriteString("resources:\n")
	for _, r := range resources {
		rel := strings.Repeat("../", strings.Count(strings.TrimPrefix(dir, "/"), "/")+1) + strings.TrimPrefix(r, "/")
		fmt.Fprintf(&b, "- %q\n", rel)
	}
	return []byte(b.String())
}

// cleanKustomizeError shows repository paths as the user writes them.
func cleanKustomizeError(err error) error {
	msg := err.Error()
	msg = regexp.MustCompile(`(\.\./)+repo/`).ReplaceAllString(msg, "")
	msg = strings.ReplaceAll(msg, repoRoot+"/", "")
	return fmt.Errorf("%s", msg)
}

// findService returns the service's Deployment and its Service (nil when there is none). A
// name prefix or suffix added by the kustomization (kustomize's namePrefix) is allowed: a
// Deployment whose rendered name contains the service name is taken when it is the only one.
func findService(m resmap.ResMap, service string) (*resource.Resource, *resource.Resource, error) {
	deploy, err := findByName(m, "Deployment", service)
	if err != nil {
		return nil, nil, err
	}
	if deploy == nil {
		return nil, nil, fmt.Errorf("service %q: the manifests have no Deployment named %q", service, service)
	}
	svc, err := findByName(m, "Service", service)
	if err != nil {
		return nil, nil, err
	}
	return deploy, svc, nil
}

// findByName returns the resource of a kind named name, or else the only one whose name
// contains it.
func findByName(m resmap.ResMap, kind, name string) (*resource.Resource, error) {
	var near []*resource.Resource
	for _, res := range m.Resources() {
		if res.GetKind() != kind {
			continue
		}
		if res.GetName() == name {
			return res, nil
		}
		if strings.Contains(res.GetName(), name) {
			near = append(near, res)
		}
	}
	switch len(near) {
	case 0:
		return nil, nil
	case 1:
		return near[0], nil
	}
	names := make([]string, len(near))
	for i, r := range near {
		names[i] = r.GetName()
	}
	return nil, fmt.Errorf("service %q: no %s has that name, and several contain it: %s; name the one to use",
		name, kind, strings.Join(names, ", "))
}

// injectImage sets the tag (or digest) of every container and init container of the
// Deployment whose image has the given name, following kustomize's `images` semantics.
func injectImage(deploy *resource.Resource, image, tag string) error {
	if image == "" {
		return nil
	}
	it := types.Image{Name: image, NewTag: tag}
	if strings.HasPrefix(tag, "sha256:") {
		it = types.Image{Name: image, Digest: tag}
	}
	if _, err := (imagetag.LegacyFilter{ImageTag: it}).Filter([]*kyaml.RNode{&deploy.RNode}); err != nil {
		return fmt.Errorf("set image %s of Deployment %q: %w", image, deploy.GetName(), err)
	}
	return nil
}

// checkImageUsed makes it an error when no container of the Deployment uses the input image:
// the pipeline would release nothing.
func checkImageUsed(rel *Release, image string) error {
	if image == "" {
		return nil
	}
	for _, img := range rel.Images {
		if imageName(img) == image {
			return nil
		}
	}
	return fmt.Errorf("no container of Deployment %q uses image %s (it runs %s)", rel.Deployment, image, strings.Join(rel.Images, ", "))
}

// imageName strips the tag and digest from an image reference.
func imageName(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}

// deploymentImages returns the images of a Deployment's init containers and containers.
func deploymentImages(u *unstructured.Unstructured) []string {
	if u == nil {
		return nil
	}
	var images []string
	for _, field := range []string{"initContainers", "containers"} {
		containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", field)
		for _, c := range containers {
			if m, ok := c.(map[string]any); ok {
				if img, ok := m["image"].(string); ok {
					images = append(images, img)
				}
			}
		}
	}
	return images
}

var placeholderRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// toObjects converts kustomize's resources to unstructured objects, replacing `${name}`
// placeholders with the pipeline's values. Placeholders without a value are left alone.
func toObjects(m resmap.ResMap, values Values) ([]*unstructured.Unstructured, error) {
	objects := make([]*unstructured.Unstructured, 0, m.Size())
	for _, res := range m.Resources() {
		u, err := toObject(res, values)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", res.GetKind(), res.GetName(), err)
		}
		objects = append(objects, u)
	}
	return objects, nil
}

// toObject converts a resource to an unstructured object. Without values it converts the
// YAML tree directly, several times cheaper than through JSON text; with values the YAML text
// is substituted first, so `replicas: ${replicas}` becomes a number.
func toObject(res *resource.Resource, values Values) (*unstructured.Unstructured, error) {
	if len(values) == 0 {
		if v, err := nodeValue(res.YNode(), 0); err == nil {
			if m, ok := v.(map[string]any); ok {
				return &unstructured.Unstructured{Object: m}, nil
			}
		}
	}
	data, err := resourceJSON(res, values)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		return nil, err
	}
	return u, nil
}

// resourceJSON returns a resource as JSON, its YAML text substituted first when there are
// values.
func resourceJSON(res *resource.Resource, values Values) ([]byte, error) {
	if len(values) == 0 {
		return res.MarshalJSON()
	}
	y, err := res.AsYAML()
	if err != nil {
		return nil, err
	}
	y = placeholderRE.ReplaceAllFunc(y, func(ph []byte) []byte {
		if v, ok := values[string(ph[2:len(ph)-1])]; ok {
			return []byte(v)
		}
		return ph
	})
	data, err := sigsyaml.YAMLToJSON(y)
	if err != nil {
		return nil, fmt.Errorf("after substituting values: %w", err)
	}
	return data, nil
}

// errNotJSON says a YAML value has no plain JSON form (e.g. .inf, a timestamp); such a
// resource takes the slower JSON path, which converts it as kustomize does.
var errNotJSON = errors.New("value has no plain JSON form")

// nodeValue converts a YAML node to the values unstructured objects hold: maps, slices,
// strings, int64, float64, bools and nil.
func nodeValue(n *kyaml.Node, depth int) (any, error) {
	if depth > 256 {
		return nil, errNotJSON
	}
	switch n.Kind {
	case kyaml.DocumentNode:
		if len(n.Content) != 1 {
			return nil, errNotJSON
		}
		return nodeValue(n.Content[0], depth+1)
	case kyaml.AliasNode:
		return nodeValue(n.Alias, depth+1)
	case kyaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind != kyaml.ScalarNode || k.Value == "<<" {
				return nil, errNotJSON
			}
			v, err := nodeValue(n.Content[i+1], depth+1)
			if err != nil {
				return nil, err
			}
			m[k.Value] = v
		}
		return m, nil
	case kyaml.SequenceNode:
		s := make([]any, len(n.Content))
		for i, c := range n.Content {
			v, err := nodeValue(c, depth+1)
			if err != nil {
				return nil, err
			}
			s[i] = v
		}
		return s, nil
	case kyaml.ScalarNode:
		return scalarValue(n)
	}
	return nil, errNotJSON
}

// scalarValue converts a scalar by its resolved tag, as JSON would hold it.
func scalarValue(n *kyaml.Node) (any, error) {
	switch n.ShortTag() {
	case "!!str":
		return n.Value, nil
	case "!!null":
		return nil, nil
	case "!!bool":
		b, err := strconv.ParseBool(strings.ToLower(n.Value))
		if err != nil {
			return nil, errNotJSON
		}
		return b, nil
	case "!!int":
		if i, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64); err == nil {
			return i, nil
		}
		return nil, errNotJSON
	case "!!float":
		f, err := strconv.ParseFloat(n.Value, 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, errNotJSON
		}
		if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
			return int64(f), nil // as JSON decoding into unstructured does
		}
		return f, nil
	}
	return nil, errNotJSON
}

func findObject(objects []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objects {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}
