// Package planner turns a Git snapshot into the desired release of every pipeline stage and
// shows what would change in the cluster. It parses and validates pipeline files strictly,
// renders each stage's manifests with kustomize on a filesystem confined to the repository,
// injects the release image, hashes the result, and diffs it against a live cluster by
// server-side apply dry-run. It reads the cluster but never writes to it; only the reconciler
// does.
package planner

import (
	"fmt"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"ebb.dev/ebb/internal/ssa"
	"ebb.dev/ebb/planner/strictyaml"
)

// APIVersion and KindPipeline identify a pipeline document.
const (
	APIVersion   = "ebb.dev/v1alpha1"
	KindPipeline = "Pipeline"
)

// Labels set on every rendered object, naming the pipeline and stage that own it: the apply
// engine's owner labels.
const (
	LabelPipeline = ssa.LabelPipeline
	LabelStage    = ssa.LabelStage
)

// Pipeline is one parsed and validated pipeline file: a service, its release inputs and the
// stages it is rolled out through, in order.
type Pipeline struct {
	APIVersion string       `json:"apiVersion"`
	Kind       string       `json:"kind"`
	Metadata   Metadata     `json:"metadata"`
	Spec       PipelineSpec `json:"spec"`

	// File is the path of the pipeline file inside the repository.
	File string `json:"-"`
	// fields locates each field in File for later messages.
	fields *strictyaml.Fields
}

// Metadata names a pipeline.
type Metadata struct {
	// Name identifies the pipeline in executions, labels and the CLI; a DNS label.
	Name string `json:"name"`
	// Labels and Annotations are free-form, for the user's own tooling.
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// PipelineSpec is what a pipeline deploys and how.
type PipelineSpec struct {
	// Enabled lets the reconciler apply the pipeline. A new pipeline is planned only (its
	// diff shown) until someone enables it, so it is reviewed before it runs. Default false.
	Enabled bool `json:"enabled"`
	// Input holds the release inputs: a commit that changes the rendered release starts an
	// execution.
	Input Input `json:"input"`
	// Manifests is a kustomize directory or a plain YAML directory inside the repository,
	// relative to its root. A stage may override it.
	Manifests string `json:"manifests,omitempty"`
	// Helm renders a Helm chart of the repository instead of Manifests (see helm.go). A stage
	// may override it, with its own helm or manifests.
	Helm *HelmSource `json:"helm,omitempty"`
	// Service names the Service and Deployment the deployment model acts on.
	Service string `json:"service"`
	// Stages are rolled out in order; a later stage starts only after the earlier succeeded.
	Stages []Stage `json:"stages"`
	// WriteBack, when set, records a completed rollback in Git: the pipeline's files are
	// restored to the known-good commit (internal/writeback). Default off.
	WriteBack *WriteBack `json:"writeBack,omitempty"`
}

// WriteBack says how a rollback is written back to Git.
type WriteBack struct {
	// Mode is commit (push to the followed branch) or branch (push ebb/rollback/<pipeline>-<n>
	// for a person to review).
	Mode string `json:"mode"`
}

// Write-back modes.
const (
	WriteBackCommit = "commit"
	WriteBackBranch = "branch"
)

// Input is what makes one release differ from the next besides the manifests.
type Input struct {
	// Image is an image name without tag or digest, e.g. registry.example.com/team/web. The
	// containers of the service's Deployment whose image has this name get Tag, with
	// kustomize `images` semantics.
	Image string `json:"image,omitempty"`
	// Tag is the tag to deploy, or a digest ("sha256:…").
	Tag string `json:"tag,omitempty"`
	// Values replace `${name}` placeholders in the rendered manifests.
	Values Values `json:"values,omitempty"`
}

// Values are free-form release inputs. Any scalar is accepted and kept as its literal text.
type Values map[string]string

// DecodeNode accepts a mapping of scalars of any type.
func (v *Values) DecodeNode(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("expected a mapping of names to values, got %s", strictyaml.Describe(n))
	}
	out := make(Values, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		if val.Kind == yaml.AliasNode {
			val = val.Alias
		}
		if key.Kind != yaml.ScalarNode || val.Kind != yaml.ScalarNode {
			return fmt.Errorf("value %q must be a scalar, got %s", key.Value, strictyaml.Describe(val))
		}
		out[key.Value] = val.Value
	}
	*v = out
	return nil
}

// Model is how a stage replaces the running release with the new one.
type Model string

// The deployment models.
const (
	// ModelRolling updates the Deployment in place, optionally in phases.
	ModelRolling Model = "rolling"
	// ModelBlueGreen deploys the new release beside the old one, verifies it, then switches
	// the Service over and retires the old one.
	ModelBlueGreen Model = "blue-green"
)

// DecodeNode accepts only the known models.
func (m *Model) DecodeNode(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
		switch Model(n.Value) {
		case ModelRolling, ModelBlueGreen:
			*m = Model(n.Value)
			return nil
		}
	}
	return fmt.Errorf("unknown model %s, want %q or %q", strictyaml.Describe(n), ModelRolling, ModelBlueGreen)
}

// Stage is one environment the release goes through.
type Stage struct {
	// Name is unique within the pipeline, e.g. dev or prod.
	Name string `json:"name"`
	// Cluster names an endpoint from the daemon's config.
	Cluster string `json:"cluster"`
	// Namespace is set on every namespaced object of the release, with kustomize `namespace`
	// semantics.
	Namespace string `json:"namespace"`
	// Manifests overrides the pipeline's manifests for this stage, e.g. an overlay directory.
	Manifests string `json:"manifests,omitempty"`
	// Helm overrides the pipeline's source with a Helm chart; a stage has manifests or helm,
	// not both.
	Helm *HelmSource `json:"helm,omitempty"`
	// Model is rolling (default) or blue-green.
	Model Model `json:"model"`
	// Phases split a rolling update: the one phase runs the new release on its number of
	// replicas beside the old pods, and is verified before the whole Deployment follows.
	// Rolling only.
	Phases []Phase `json:"phases,omitempty"`
	// BlueGreen tunes the blue-green model. Blue-green only.
	BlueGreen *BlueGreen `json:"blueGreen,omitempty"`
	// Verify says how a deployed release is checked.
	Verify Verify `json:"verify"`
	// Approval, when set, holds the stage until someone approves it.
	Approval *Approval `json:"approval,omitempty"`
	// Rollback reapplies the last known-good release when a task of the stage fails.
	Rollback bool `json:"rollback"`
	// SelfHeal restores drift (someone edited a managed object) on every poll. Default true.
	SelfHeal bool `json:"selfHeal"`
}

// SetDefaults fills in a stage's documented defaults before it is decoded.
func (s *Stage) SetDefaults() {
	s.Model = ModelRolling
	s.SelfHeal = true
	s.Verify.SetDefaults()
}

// BlueGreen tunes a blue-green stage.
type BlueGreen struct {
	// RetireAfter is how long the old release ("blue") keeps running after traffic switched to
	// the new one; until then a rollback is only a switch of the Service back. Default 30s.
	RetireAfter Duration `json:"retireAfter"`
}

// SetDefaults sets RetireAfter to 30s.
func (b *BlueGreen) SetDefaults() { b.RetireAfter = Duration{30 * time.Second} }

// RetireAfter returns how long blue outlives the switch: BlueGreen.RetireAfter, or 30s.
func (s *Stage) RetireAfter() time.Duration {
	if s.BlueGreen != nil {
		return s.BlueGreen.RetireAfter.Duration
	}
	return 30 * time.Second
}

// Phase is one step of a phased rolling update.
type Phase struct {
	// Replicas is how many pods run the new release in this phase; at least 1.
	Replicas int32 `json:"replicas"`
}

// Verify lists the checks of a deployed release; every configured check must pass.
type Verify struct {
	// Rollout waits for the Deployment to finish rolling out. Always checked.
	Rollout RolloutCheck `json:"rollout"`
	// HealthCheck polls an HTTP endpoint.
	HealthCheck *HealthCheck `json:"healthCheck,omitempty"`
	// Metrics evaluates a Prometheus query.
	Metrics *MetricsCheck `json:"metrics,omitempty"`
	// Pods watches the pods of the new release while it is verified, and fails the release as
	// soon as one of them cannot run (fail-fast). On by default.
	Pods PodsCheck `json:"pods"`
}

// SetDefaults sets the rollout timeout and turns fail-fast on.
func (v *Verify) SetDefaults() {
	v.Rollout.SetDefaults()
	v.Pods.SetDefaults()
}

// PodsCheck is fail-fast verification: while a release is verified, a pod of it that cannot
// run fails the release at once, without waiting for the rollout's deadline. A pod cannot run
// when a container of it is in CrashLoopBackOff, cannot pull its image (ErrImagePull,
// ImagePullBackOff, InvalidImageName), cannot be created (CreateContainerConfigError,
// CreateContainerError, RunContainerError), was OOMKilled, restarted more than Restarts
// times, or when the pod waited for a node longer than Unschedulable.
type PodsCheck struct {
	// FailFast turns the check on. Default true.
	FailFast bool `json:"failFast"`
	// Restarts is how many times each container of the new release may restart: one more
	// restart, or a CrashLoopBackOff once it restarted that many times, fails the release.
	// Default 1, which tolerates one transient restart; 0 fails at the first.
	Restarts int `json:"restarts"`
	// Unschedulable is how long a pod may wait for a node (the scheduler says Unschedulable)
	// before it fails the release. Default 2m, time for a cluster autoscaler to add a node.
	Unschedulable Duration `json:"unschedulable"`
}

// SetDefaults turns fail-fast on, with one restart tolerated and 2m to find a node.
func (p *PodsCheck) SetDefaults() {
	p.FailFast = true
	p.Restarts = 1
	p.Unschedulable = Duration{2 * time.Minute}
}

// RolloutCheck waits for progress, observedGeneration and ready replicas.
type RolloutCheck struct {
	// Timeout is how long the rollout may take. Default 5m.
	Timeout Duration `json:"timeout"`
}

// SetDefaults sets Timeout to 5m.
func (r *RolloutCheck) SetDefaults() { r.Timeout = Duration{5 * time.Minute} }

// HealthCheck passes after Successes consecutive 2xx answers from URL, and fails after
// Failures consecutive other answers or when Timeout passes.
//
// In a blue-green stage, "{service}" in URL is replaced by the Service being verified: the
// preview Service while verifying green, the stage's Service after the switch.
type HealthCheck struct {
	URL       string   `json:"url"`
	Interval  Duration `json:"interval"`
	Successes int      `json:"successes"`
	Failures  int      `json:"failures"`
	Timeout   Duration `json:"timeout"`
}

// SetDefaults sets interval 5s, 3 successes, 3 failures and timeout 2m.
func (h *HealthCheck) SetDefaults() {
	h.Interval = Duration{5 * time.Second}
	h.Successes = 3
	h.Failures = 3
	h.Timeout = Duration{2 * time.Minute}
}

// MetricsCheck evaluates Query against Prometheus every Interval for the duration For; the
// check fails as soon as a result is above Max or below Min.
type MetricsCheck struct {
	Prometheus string   `json:"prometheus"`
	Query      string   `json:"query"`
	Max        *float64 `json:"max,omitempty"`
	Min        *float64 `json:"min,omitempty"`
	Interval   Duration `json:"interval"`
	For        Duration `json:"for"`
	// Auth authenticates to the server (metricsauth.go); nil sends no credentials.
	Auth *MetricsAuth `json:"auth,omitempty"`
}

// SetDefaults sets interval 15s and for 2m.
func (m *MetricsCheck) SetDefaults() {
	m.Interval = Duration{15 * time.Second}
	m.For = Duration{2 * time.Minute}
}

// Approval gates a stage on a person's approval.
type Approval struct {
	// Approvers are users ("alice") or groups ("group:release-managers") who may approve.
	Approvers []string `json:"approvers"`
	// Timeout after which an unapproved stage fails. Default 24h.
	Timeout Duration `json:"timeout"`
}

// SetDefaults sets Timeout to 24h.
func (a *Approval) SetDefaults() { a.Timeout = Duration{24 * time.Hour} }

// Duration is a positive Go duration written as a string, e.g. "30s" or "1h30m".
type Duration struct {
	time.Duration
}

// DecodeNode parses a positive duration.
func (d *Duration) DecodeNode(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		return fmt.Errorf("expected a duration such as 30s, 5m or 1h30m, got %s", strictyaml.Describe(n))
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil || v <= 0 {
		return fmt.Errorf("bad duration %q: want a positive duration such as 30s, 5m or 1h30m", n.Value)
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes the duration the way it is written in a pipeline file.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(`"` + d.String() + `"`), nil
}

// StageNamed returns the stage with the given name, or nil.
func (p *Pipeline) StageNamed(name string) *Stage {
	for i := range p.Spec.Stages {
		if p.Spec.Stages[i].Name == name {
			return &p.Spec.Stages[i]
		}
	}
	return nil
}

// ManifestsOf returns the manifests directory a stage renders: its own, or the pipeline's;
// "" when it renders a Helm chart (HelmOf).
func (p *Pipeline) ManifestsOf(s *Stage) string {
	if s.Manifests != "" {
		return s.Manifests
	}
	if s.Helm != nil {
		return ""
	}
	return p.Spec.Manifests
}

// HelmOf returns the Helm chart a stage renders: its own, or the pipeline's unless the stage
// sets manifests; nil for a stage that renders manifests.
func (p *Pipeline) HelmOf(s *Stage) *HelmSource {
	if s.Helm != nil {
		return s.Helm
	}
	if s.Manifests != "" {
		return nil
	}
	return p.Spec.Helm
}

// manifestsField is the field path that set a stage's manifests (or Helm chart), for
// messages.
func (p *Pipeline) manifestsField(i int) string {
	s := &p.Spec.Stages[i]
	switch {
	case s.Manifests != "":
		return fmt.Sprintf("spec.stages[%d].manifests", i)
	case s.Helm != nil:
		return fmt.Sprintf("spec.stages[%d].helm.chart", i)
	case p.Spec.Helm != nil:
		return "spec.helm.chart"
	}
	return "spec.manifests"
}

// errorAt returns an error located at the field path in the pipeline's file.
func (p *Pipeline) errorAt(path, format string, args ...any) *strictyaml.Error {
	return &strictyaml.Error{File: p.File, Pos: p.fields.Lookup(path), Msg: fmt.Sprintf(format, args...)}
}

// String names the pipeline and its file.
func (p *Pipeline) String() string {
	return fmt.Sprintf("pipeline %q (%s)", p.Metadata.Name, strings.TrimPrefix(p.File, "./"))
}
