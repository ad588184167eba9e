package planner

import (
	"crypto/sha256"
	"encoding/hex"
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
)

// scratchRoot holds the kustomization ebb writes for a plain YAML directory. It is outside
// repoRoot, so it is never mistaken for the user's files.
const scratchRoot = "/ebb"

// kustomizeMu guards kustomize's process-wide OpenAPI schema (kyaml/openapi), the only state
// its builds share. Once parsed, builds only read it, and run at once under the read lock. A
// kustomization's `openapi` field changes it and marks it to be parsed again, lazily, while
// other builds read it unlocked: builds that may set it hold the write lock.
var (
	kustomizeMu sync.RWMutex
	parseSchema sync.Once
)

// lockKustomize locks for one build, exclusively when the build may set the schema, and
// returns the unlock.
func lockKustomize(setsSchema bool) (unlock func()) {
	if !setsSchema {
		// Parse the default schema before any builds run at once: kustomize parses it on
		// first use, while other builds may read it unlocked.
		parseSchema.Do(func() {
			kustomizeMu.Lock()
			defer kustomizeMu.Unlock()
			openapi.Schema()
		})
		kustomizeMu.RLock()
		return kustomizeMu.RUnlock
	}
	kustomizeMu.Lock()
	return func() {
		// Put the default schema back, parsed: kustomize would keep this build's for the
		// builds after it that set none, and parse it lazily while they read it.
		openapi.ResetOpenAPI()
		openapi.Schema()
		kustomizeMu.Unlock()
	}
}

// Renderer renders stages into releases and remembers, per pipeline stage, the inputs of the
// last render: a stage whose inputs did not change is not rendered again. Its methods may be
// called from several goroutines at once.
type Renderer struct {
	opts Options

	mu    sync.Mutex
	cache map[string]*cacheEntry
	stats RenderStats
}

// RenderStats count renders, for logs, metrics and tests.
type RenderStats struct {
	// Rendered is how many releases kustomize built.
	Rendered int
	// Reused is how many releases came from the cache because their inputs were unchanged.
	Reused int
}

type cacheEntry struct {
	params  string
	ops     []fsOp
	release *Release
}

// NewRenderer returns a Renderer with an empty cache.
func NewRenderer(opts Options) *Renderer {
	return &Renderer{opts: opts, cache: map[string]*cacheEntry{}}
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
	Service   string
	Image     string
	Tag       string
	Values    Values
}

func newRenderParams(p *Pipeline, s *Stage) renderParams {
	return renderParams{
		Pipeline: p.Metadata.Name, Stage: s.Name, Cluster: s.Cluster, Namespace: s.Namespace,
		Manifests: path.Clean(p.ManifestsOf(s)), Service: p.Spec.Service,
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
// not stop the others; its error is located at the field that set its manifests, and all of
// them are returned as RenderErrors, which name each failed stage's pipeline and also read as
// a strictyaml.ErrorList.
func (r *Renderer) RenderAll(repo *Repo, pipelines []*Pipeline) ([]*Release, error) {
	type job struct {
		p     *Pipeline
		stage int
	}
	var jobs []job
	for _, p := range pipelines {
		for i := range p.Spec.Stages {
			jobs = append(jobs, job{p, i})
		}
	}
	releases := make([]*Release, len(jobs))
	failures := make([]error, len(jobs))
	forEach(len(jobs), runtime.GOMAXPROCS(0), func(i int) {
		j := jobs[i]
		releases[i], failures[i] = r.Render(repo, j.p, j.p.Spec.Stages[j.stage].Name)
	})
	var errs RenderErrors
	rendered := releases[:0]
	for i, rel := range releases {
		if failures[i] != nil {
			p, stage := jobs[i].p, jobs[i].stage
			errs = append(errs, &StageError{
				Pipeline: p.Metadata.Name, Stage: p.Spec.Stages[stage].Name,
				Err: p.errorAt(p.manifestsField(stage), "%v", failures[i]),
			})
			continue
		}
		rendered = append(rendered, rel)
	}
	errs.sort()
	return rendered, errs.Err()
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

// render returns the cached release when its inputs are unchanged, and builds it otherwise.
// Renders of a snapshot may run at once: each has its own view of the shared files.
func (r *Renderer) render(repo *Repo, params renderParams) (*Release, error) {
	mem, err := repo.memFS()
	if err != nil {
		return nil, err
	}
	cacheKey, paramsKey := params.Pipeline+"/"+params.Stage, params.key()
	if rel := r.cached(cacheKey, paramsKey, mem); rel != nil {
		return rel, nil
	}
	fsys := newRenderFS(mem)
	unlock := lockKustomize(repo.setsSchema || r.opts.AllowRemoteBases)
	rel, err := build(fsys, params)
	unlock()
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.Rendered++
	r.cache[cacheKey] = &cacheEntry{params: paramsKey, ops: fsys.ops, release: rel}
	return rel, nil
}

// cached returns the cached release of a stage if its parameters and files are unchanged.
func (r *Renderer) cached(cacheKey, paramsKey string, mem filesys.FileSystem) *Release {
	r.mu.Lock()
	e := r.cache[cacheKey]
	r.mu.Unlock()
	if e == nil || e.params != paramsKey || !replay(e.ops, mem) {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.Reused++
	return e.release
}

// build runs the named steps of a render: kustomize with the stage's namespace and labels,
// the image injected into the service's Deployment, values substituted, objects ordered and
// hashed.
func build(fsys *renderFS, params renderParams) (*Release, error) {
	m, err := runKustomize(fsys, params)
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
	rel := &Release{
		Pipeline: params.Pipeline, Stage: params.Stage, Cluster: params.Cluster, Namespace: params.Namespace,
		Deployment: deploy.GetName(), Objects: objects, Hash: hashObjects(objects),
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
		data, err := fsys.ReadFile(file)
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

// hashObjects returns "sha256:<hex>" over the canonical JSON of the ordered objects. JSON
// encoding sorts map keys, so the hash does not depend on map order or YAML formatting.
func hashObjects(objects []*unstructured.Unstructured) string {
	h := sha256.New()
	enc := json.NewEncoder(h)
	for _, o := range objects {
		_ = enc.Encode(o.Object)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func findObject(objects []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objects {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}
