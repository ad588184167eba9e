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
	"sort"
	"strconv"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/filters/imagetag"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/api/resource"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	kyaml "sigs.k8s.io/kustomize/kyaml/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	"ebb.dev/ebb/planner/strictyaml"
)

// scratchRoot holds the kustomization ebb writes for a plain YAML directory. It is outside
// repoRoot, so it is never mistaken for the user's files.
const scratchRoot = "/ebb"

// kustomizeMu serialises kustomize runs: kustomize keeps process-wide state (its OpenAPI
// schema) that concurrent builds would race on.
var kustomizeMu sync.Mutex

// Renderer renders stages into releases and remembers, per pipeline stage, the inputs of the
// last render: a stage whose inputs did not change is not rendered again.
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

// RenderAll renders every stage of every pipeline and returns the releases that rendered. A
// stage that fails does not stop the others; its error is located at the field that set its
// manifests, and all of them are returned as a strictyaml.ErrorList.
func (r *Renderer) RenderAll(repo *Repo, pipelines []*Pipeline) ([]*Release, error) {
	var (
		releases []*Release
		errs     strictyaml.ErrorList
	)
	for _, p := range pipelines {
		for i, s := range p.Spec.Stages {
			rel, err := r.Render(repo, p, s.Name)
			if err != nil {
				errs = append(errs, p.errorAt(p.manifestsField(i), "%v", err))
				continue
			}
			releases = append(releases, rel)
		}
	}
	errs.Sort()
	return releases, errs.Err()
}

// render returns the cached release when its inputs are unchanged, and builds it otherwise.
func (r *Renderer) render(repo *Repo, params renderParams) (*Release, error) {
	mem, err := repo.memFS()
	if err != nil {
		return nil, err
	}
	cacheKey, paramsKey := params.Pipeline+"/"+params.Stage, params.key()
	// The scratch kustomization is written into the snapshot's shared filesystem, so reading
	// it (for the cache) and building are done one at a time.
	kustomizeMu.Lock()
	defer kustomizeMu.Unlock()
	if rel := r.cached(cacheKey, paramsKey, mem); rel != nil {
		return rel, nil
	}
	rec := newRecordingFS(mem, scratchRoot+"/")
	rel, err := build(rec, params)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.Rendered++
	r.cache[cacheKey] = &cacheEntry{params: paramsKey, ops: rec.ops, release: rel}
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
func build(fsys *recordingFS, params renderParams) (*Release, error) {
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
// with kustomize's own semantics. A kustomization gets the two fields added to its own file
// for the build (in the in-memory copy; a wrapping kustomization would cost a third more
// time). A directory without kustomization is a plain YAML directory: ebb writes one that
// lists its YAML files.
func runKustomize(fsys *recordingFS, params renderParams) (resmap.ResMap, error) {
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
	} else {
		restore, err := standIn(fsys, resources[0], params)
		if err != nil {
			return nil, err
		}
		defer restore()
	}
	m, err := krusty.MakeKustomizer(opts).Run(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %w", params.Manifests, cleanKustomizeError(err))
	}
	return m, nil
}

func writeScratch(fsys *recordingFS, dir string, kustomization []byte) error {
	if err := fsys.MkdirAll(dir); err != nil {
		return err
	}
	return fsys.WriteFile(path.Join(dir, "kustomization.yaml"), kustomization)
}

// standIn replaces a kustomization file, for one build, with a copy that also sets the
// stage's namespace and adds ebb's labels. Its original content is what the cache notes.
func standIn(fsys *recordingFS, file string, params renderParams) (func(), error) {
	original, err := fsys.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var k map[string]any
	if err := sigsyaml.Unmarshal(original, &k); err != nil {
		return nil, fmt.Errorf("kustomize %s: read %s: %w", params.Manifests, strings.TrimPrefix(file, repoRoot+"/"), err)
	}
	if k == nil {
		k = map[string]any{}
	}
	k["namespace"] = params.Namespace
	labels, _ := k["labels"].([]any)
	k["labels"] = append(labels, map[string]any{
		"includeSelectors": false,
		"pairs":            map[string]any{LabelPipeline: params.Pipeline, LabelStage: params.Stage},
	})
	changed, err := sigsyaml.Marshal(k)
	if err != nil {
		return nil, err
	}
	fsys.hidden = file
	if err := fsys.FileSystem.WriteFile(file, changed); err != nil {
		return nil, err
	}
	return func() {
		_ = fsys.FileSystem.WriteFile(file, original)
		fsys.hidden = ""
	}, nil
}

// stageResources returns the kustomization file of the manifests directory, or else, for a
// plain directory, the YAML files in it (ebb's own files left out).
func stageResources(fsys *recordingFS, src string) ([]string, bool, error) {
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

// wrapperKustomization sets the stage's namespace and ebb's labels on the manifests, with
// kustomize's own semantics. The labels go on metadata only: selectors are immutable.
func wrapperKustomization(dir string, resources []string, params renderParams) []byte {
	var b strings.Builder
	b.WriteString("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n")
	fmt.Fprintf(&b, "namespace: %q\n", params.Namespace)
	b.WriteString("resources:\n")
	for _, r := range resources {
		rel := strings.Repeat("../", strings.Count(strings.TrimPrefix(dir, "/"), "/")+1) + strings.TrimPrefix(r, "/")
		fmt.Fprintf(&b, "- %q\n", rel)
	}
	fmt.Fprintf(&b, "labels:\n- includeSelectors: false\n  pairs:\n    %s: %q\n    %s: %q\n",
		LabelPipeline, params.Pipeline, LabelStage, params.Stage)
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
