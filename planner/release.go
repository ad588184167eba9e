package planner

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"

	utiljson "k8s.io/apimachinery/pkg/util/json"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"ebb.dev/ebb/internal/ssa"
)

// Release is the desired state of one stage: the rendered objects, in apply order, and a
// content hash that identifies them. The reconciler applies it, records its hash in the
// stage ledger, and compares hashes to recognise a release it has seen before.
type Release struct {
	// Pipeline and Stage name what the release is for.
	Pipeline string
	Stage    string
	// Cluster is the stage's cluster name from the daemon config.
	Cluster string
	// Namespace is the stage's namespace, set on every namespaced object. When Objects do not
	// hold it, the reconciler creates it (without ebb's labels: it is never pruned).
	Namespace string
	// Deployment is the rendered name of the service's Deployment, the object the deployment
	// model acts on (a namePrefix may have changed it from the pipeline's service).
	Deployment string
	// Service is the rendered name of the service's Service, or "" when there is none.
	Service string
	// Objects are the rendered objects in apply order: namespaces and cluster-wide objects
	// first, workloads later. Each carries LabelPipeline and LabelStage.
	Objects Objects
	// Hash is "sha256:<hex>" over the canonical JSON of Objects. Equal inputs give an equal
	// hash whatever the map order or YAML formatting of the files.
	Hash string
	// Images are the images of the Deployment's init containers and containers.
	Images []string
	// Notes say what the render left out of the release, e.g. a Helm chart's hooks, for
	// `ebb plan` to show.
	Notes []string
}

// Objects are a release's objects in apply order, each kept as its canonical JSON: the
// daemon keeps every stage's release between commits, and a decoded Deployment and Service
// take 9 KB where their JSON takes 0.9 KB. Decode returns objects of the caller's own.
type Objects struct{ raw [][]byte }

// ObjectsOf keeps objs, in their order.
func ObjectsOf(objs []*unstructured.Unstructured) (Objects, error) {
	out := Objects{raw: make([][]byte, len(objs))}
	for i, o := range objs {
		data, err := json.Marshal(o.Object)
		if err != nil {
			return Objects{}, fmt.Errorf("object %s: %w", RefOf(o), err)
		}
		out.raw[i] = data
	}
	return out, nil
}

// Decode returns the objects, new ones at each call: the caller may change them.
func (o Objects) Decode() []*unstructured.Unstructured {
	out := make([]*unstructured.Unstructured, len(o.raw))
	for i, data := range o.raw {
		m := map[string]any{}
		// apimachinery's JSON keeps integers int64, as a decoded object holds them.
		if err := utiljson.Unmarshal(data, &m); err != nil {
			panic(fmt.Sprintf("decode a rendered object: %v", err)) // written by json.Marshal
		}
		out[i] = &unstructured.Unstructured{Object: m}
	}
	return out
}

// Len is the number of objects.
func (o Objects) Len() int { return len(o.raw) }

// hash is "sha256:<hex>" over the objects' canonical JSON, each followed by a newline.
func (o Objects) hash() string {
	h := sha256.New()
	for _, data := range o.raw {
		h.Write(data)
		h.Write([]byte{'\n'})
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// ObjectRef identifies an object in a cluster.
type ObjectRef struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
}

// RefOf returns the reference of an object.
func RefOf(u *unstructured.Unstructured) ObjectRef {
	return ObjectRef{APIVersion: u.GetAPIVersion(), Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName()}
}

// String writes Kind/namespace/name, or Kind/name for cluster-wide objects, as kubectl does.
func (r ObjectRef) String() string {
	if r.Namespace == "" {
		return fmt.Sprintf("%s/%s", r.Kind, r.Name)
	}
	return fmt.Sprintf("%s/%s/%s", r.Kind, r.Namespace, r.Name)
}

// sortObjects puts objects in apply order; ties are broken by apiVersion, namespace and name,
// so the order (and the hash) does not depend on the order of files or resources.
func sortObjects(objects []*unstructured.Unstructured) {
	sort.SliceStable(objects, func(i, j int) bool {
		a, b := objects[i], objects[j]
		if ra, rb := ssa.KindRank(a.GetKind()), ssa.KindRank(b.GetKind()); ra != rb {
			return ra < rb
		}
		if a.GetKind() != b.GetKind() {
			return a.GetKind() < b.GetKind()
		}
		if a.GetAPIVersion() != b.GetAPIVersion() {
			return a.GetAPIVersion() < b.GetAPIVersion()
		}
		if a.GetNamespace() != b.GetNamespace() {
			return a.GetNamespace() < b.GetNamespace()
		}
		return a.GetName() < b.GetName()
	})
}
