package planner

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"sort"
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

// scratchRoot holds the kustomization ebb writes around a stage's manifests to set its
// namespace and labels. It is outside repoRoot, so it is never mistaken for the user's files.
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
	return rel, nil
}

// runKustomize writes the stage's wrapping kustomization and builds it. A directory without a
// kustomization is a plain YAML directory: its YAML files are the resources.
func runKustomize(fsys *recordingFS, params renderParams) (resmap.ResMap, error) {
	src := path.Join(repoRoot, params.Manifests)
	resources, plain, err := stageResources(fsys, src)
	if err != nil {
		return nil, err
	}
	dir := path.Join(scratchRoot, params.Pipeline, params.Stage)
	kustomization := wrapperKustomization(dir, resources, params)
	if err := fsys.MkdirAll(dir); err != nil {
		return nil, err
	}
	if err := fsys.WriteFile(path.Join(dir, "kustomization.yaml"), kustomization); err != nil {
		return nil, err
	}
	opts := krusty.MakeDefaultOptions()
	if plain {
		// The files of a plain directory sit beside, not below, the wrapping kustomization.
		// The filesystem holds nothing but the repository, so this reaches nothing more.
		opts.LoadRestrictions = types.LoadRestrictionsNone
	}
	m, err := krusty.MakeKustomizer(opts).Run(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %w", params.Manifests, cleanKustomizeError(err))
	}
	return m, nil
}

// stageResources returns what the wrapping kustomization lists: the manifests directory if it
// is a kustomization, or else the YAML files in it (ebb's own files left out).
func stageResources(fsys *recordingFS, src string) ([]string, bool, error) {
	for _, name := range kustomizationFiles {
		if fsys.Exists(path.Join(src, name)) {
			return []string{src}, false, nil
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
// Deployment whose image has the given name, following kustomize's `images` semantics. It is
// an error when no container uses the image: the pipeline would release nothing.
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
	images, err := resourceImages(deploy)
	if err != nil {
		return err
	}
	for _, img := range images {
		if imageName(img) == image {
			return nil
		}
	}
	return fmt.Errorf("no container of Deployment %q uses image %s (it runs %s)", deploy.GetName(), image, strings.Join(images, ", "))
}

func resourceImages(res *resource.Resource) ([]string, error) {
	data, err := res.MarshalJSON()
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		return nil, err
	}
	return deploymentImages(u), nil
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
		data, err := resourceJSON(res, values)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", res.GetKind(), res.GetName(), err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(data); err != nil {
			return nil, fmt.Errorf("%s %q: %w", res.GetKind(), res.GetName(), err)
		}
		objects = append(objects, u)
	}
	return objects, nil
}

// resourceJSON returns a resource as JSON, its YAML text substituted first when there are
// values, so `replicas: ${replicas}` becomes a number.
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
