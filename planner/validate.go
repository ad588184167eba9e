package planner

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"ebb.dev/ebb/internal/redact"
	"ebb.dev/ebb/planner/strictyaml"
)

// Options configure what the planner accepts. cmd/ebb fills them from the daemon config.
type Options struct {
	// Clusters are the cluster names the daemon config defines; a stage naming any other is
	// an error. Nil skips the check, for `ebb validate` without a config.
	Clusters []string
	// AllowRemoteBases lets kustomizations use remote bases (Git or HTTP URLs). Off by
	// default: a release should depend on the repository alone.
	AllowRemoteBases bool
	// Limits bound what is read from the repository and how long a render may take; zero
	// fields take DefaultLimits.
	Limits Limits
	// Parsed, when set, keeps each pipeline file's parse for the next Load: the daemon loads
	// every commit, and most files are unchanged.
	Parsed *ParseCache
}

// DefaultOptions returns Options that check no cluster names, refuse remote bases and keep
// DefaultLimits.
func DefaultOptions() Options { return Options{Limits: DefaultLimits()} }

var (
	pathComponentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	domainRE        = regexp.MustCompile(`^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?$`)
	tagRE           = regexp.MustCompile(`^[\w][\w.-]{0,127}$`)
	digestRE        = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
)

// validateSpec checks everything that needs neither the repository nor the cluster.
func validateSpec(p *Pipeline, opts Options) strictyaml.ErrorList {
	v := &validator{p: p, fields: p.fields}
	v.header()
	v.input()
	if v.required("spec", "service", p.Spec.Service) {
		v.dnsLabel("spec.service", "service", p.Spec.Service)
	}
	if p.Spec.Manifests != "" {
		v.manifestsPath("spec.manifests", p.Spec.Manifests)
	}
	v.helm("spec", p.Spec.Manifests, p.Spec.Helm)
	if len(p.Spec.Stages) == 0 {
		v.errorf("spec", "missing required field \"stages\" in spec: a pipeline needs at least one stage")
	}
	seen := map[string]bool{}
	for i := range p.Spec.Stages {
		v.stage(i, opts, seen)
	}
	v.writeBack()
	return v.errs
}

type validator struct {
	p      *Pipeline
	fields *strictyaml.Fields
	errs   strictyaml.ErrorList
}

func (v *validator) errorf(path, format string, args ...any) {
	v.errs = append(v.errs, v.p.errorAt(path, format, args...))
}

// required reports a required string field that is absent, and returns whether the value is
// there to be checked further.
func (v *validator) required(parent, field, value string) bool {
	path := parent + "." + field
	switch {
	case v.fields.Failed(path):
		return false
	case value == "" && v.missing(path):
		v.errorf(parent, "missing required field %q in %s", field, parent)
		return false
	}
	return true
}

// missing reports whether a required field is absent from the file; a field written with a
// value of the wrong type was reported when it was decoded.
func (v *validator) missing(path string) bool {
	return !v.fields.Has(path)
}

func (v *validator) header() {
	p := v.p
	if p.APIVersion != APIVersion {
		v.errorf("apiVersion", "apiVersion must be %q, got %q", APIVersion, p.APIVersion)
	}
	if p.Kind != KindPipeline {
		v.errorf("kind", "kind must be %q, got %q", KindPipeline, p.Kind)
	}
	if v.required("metadata", "name", p.Metadata.Name) {
		v.dnsLabel("metadata.name", "pipeline name", p.Metadata.Name)
	}
}

func (v *validator) input() {
	in := v.p.Spec.Input
	if in.Image != "" {
		if err := checkImageName(in.Image); err != nil {
			v.errorf("spec.input.image", "bad image reference %q: %v", in.Image, err)
		}
		if in.Tag == "" && v.missing("spec.input.tag") {
			v.errorf("spec.input", "missing required field \"tag\" in spec.input: the image needs a tag or digest")
		}
	}
	if in.Tag != "" {
		if in.Image == "" && v.missing("spec.input.image") {
			v.errorf("spec.input", "missing required field \"image\" in spec.input: a tag needs an image")
		}
		if !tagRE.MatchString(in.Tag) && !digestRE.MatchString(in.Tag) {
			v.errorf("spec.input.tag", "bad image tag %q: want a tag such as 1.4.2 or a digest sha256:<64 hex digits>", in.Tag)
		}
	}
	for name := range in.Values {
		if !valueNameRE.MatchString(name) {
			v.errorf("spec.input.values."+name, "bad value name %q: use letters, digits and _", name)
		}
	}
}

var valueNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// checkImageName checks an image name without tag or digest, with the grammar of
// distribution/reference.
func checkImageName(image string) error {
	if strings.Contains(image, "@") {
		return fmt.Errorf("put the digest in input.tag, not in the image")
	}
	parts := strings.Split(image, "/")
	if strings.Contains(parts[len(parts)-1], ":") {
		return fmt.Errorf("put the tag in input.tag, not in the image")
	}
	if len(parts) > 1 && (strings.ContainsAny(parts[0], ".:") || parts[0] == "localhost") {
		if !domainRE.MatchString(parts[0]) {
			return fmt.Errorf("bad registry %q", parts[0])
		}
		parts = parts[1:]
	}
	for _, c := range parts {
		if !pathComponentRE.MatchString(c) {
			return fmt.Errorf("bad path component %q: use lowercase letters, digits and separators . _ -", c)
		}
	}
	if len(image) > 255 {
		return fmt.Errorf("longer than 255 characters")
	}
	return nil
}

func (v *validator) dnsLabel(path, what, value string) {
	if errs := validation.IsDNS1123Label(value); len(errs) > 0 {
		msg, _, _ := strings.Cut(errs[0], " (e.g.")
		v.errorf(path, "bad %s %q: %s", what, value, msg)
	}
}

// manifestsPath refuses paths that could leave the repository before it is even read.
func (v *validator) manifestsPath(path, value string) {
	if err := checkRelativePath(value); err != nil {
		v.errorf(path, "manifests path %q %v", value, err)
	}
}

// checkRelativePath refuses absolute paths and `..`; symlinks are checked against the
// repository itself.
func checkRelativePath(p string) error {
	switch {
	case strings.HasPrefix(p, "/") || strings.HasPrefix(p, `\`) || (len(p) > 1 && p[1] == ':'):
		return fmt.Errorf("is absolute; write it relative to the repository root")
	case slices.Contains(strings.FieldsFunc(p, func(r rune) bool { return r == '/' || r == '\\' }), ".."):
		return fmt.Errorf("leaves the repository: \"..\" is not allowed")
	}
	return nil
}

func (v *validator) stage(i int, opts Options, seen map[string]bool) {
	s := &v.p.Spec.Stages[i]
	at := func(field string) string { return fmt.Sprintf("spec.stages[%d]%s", i, field) }
	if v.required(at(""), "name", s.Name) {
		v.dnsLabel(at(".name"), "stage name", s.Name)
		if seen[s.Name] {
			v.errorf(at(".name"), "duplicate stage name %q", s.Name)
		}
		seen[s.Name] = true
	}
	switch {
	case !v.required(at(""), "cluster", s.Cluster):
	case opts.Clusters != nil && !slices.Contains(opts.Clusters, s.Cluster):
		v.errorf(at(".cluster"), "unknown cluster %q: the daemon config defines %s", s.Cluster, quoteList(opts.Clusters))
	}
	if v.required(at(""), "namespace", s.Namespace) {
		v.dnsLabel(at(".namespace"), "namespace", s.Namespace)
	}
	if s.Manifests != "" {
		v.manifestsPath(at(".manifests"), s.Manifests)
	} else if s.Helm == nil && v.p.Spec.Helm == nil && v.p.Spec.Manifests == "" && v.missing("spec.manifests") && v.missing(at(".manifests")) {
		v.errorf(at(""), "missing required field \"manifests\" in %s: set it (or helm) here or in spec", at(""))
	}
	v.helm(at(""), s.Manifests, s.Helm)
	v.phases(i, s)
	v.verify(i, s)
	if a := s.Approval; a != nil {
		if len(a.Approvers) == 0 {
			v.errorf(at(".approval"), "missing required field \"approvers\" in %s", at(".approval"))
		}
		for j, who := range a.Approvers {
			if strings.TrimSpace(who) == "" {
				v.errorf(fmt.Sprintf("%s.approval.approvers[%d]", at(""), j), "empty approver")
			}
		}
	}
}

func (v *validator) phases(i int, s *Stage) {
	if s.BlueGreen != nil && s.Model != ModelBlueGreen {
		v.errorf(fmt.Sprintf("spec.stages[%d].blueGreen", i), "blueGreen needs model %q, this stage is %q", ModelBlueGreen, s.Model)
	}
	if len(s.Phases) > 1 {
		v.errorf(fmt.Sprintf("spec.stages[%d].phases", i), "one phase is supported, e.g. phases: [{replicas: 1}]; got %d", len(s.Phases))
	}
	if len(s.Phases) > 0 && s.Model != ModelRolling {
		v.errorf(fmt.Sprintf("spec.stages[%d].phases", i), "phases need model %q, this stage is %q", ModelRolling, s.Model)
	}
	for j, ph := range s.Phases {
		if ph.Replicas < 1 {
			v.errorf(fmt.Sprintf("spec.stages[%d].phases[%d].replicas", i, j), "a phase needs at least 1 replica, got %d", ph.Replicas)
		}
	}
}

func (v *validator) verify(i int, s *Stage) {
	at := fmt.Sprintf("spec.stages[%d].verify", i)
	if s.Verify.Pods.Restarts < 0 {
		v.errorf(at+".pods.restarts", "restarts must be 0 or more, got %d", s.Verify.Pods.Restarts)
	}
	if h := s.Verify.HealthCheck; h != nil {
		if h.URL == "" {
			v.errorf(at+".healthCheck", "missing required field \"url\" in %s.healthCheck", at)
		} else if err := checkHTTPURL(h.URL); err != nil {
			v.errorf(at+".healthCheck.url", "bad health check URL %q: %v", redact.URL(h.URL), err)
		}
		if h.Successes < 1 {
			v.errorf(at+".healthCheck.successes", "successes must be at least 1, got %d", h.Successes)
		}
		if h.Failures < 1 {
			v.errorf(at+".healthCheck.failures", "failures must be at least 1, got %d", h.Failures)
		}
	}
	if m := s.Verify.Metrics; m != nil {
		if m.Prometheus == "" {
			v.errorf(at+".metrics", "missing required field \"prometheus\" in %s.metrics", at)
		} else if err := checkHTTPURL(m.Prometheus); err != nil {
			v.errorf(at+".metrics.prometheus", "bad Prometheus URL %q: %v", redact.URL(m.Prometheus), err)
		}
		if strings.TrimSpace(m.Query) == "" {
			v.errorf(at+".metrics", "missing required field \"query\" in %s.metrics", at)
		}
		switch {
		case m.Max == nil && m.Min == nil:
			v.errorf(at+".metrics", "%s.metrics needs a threshold: set max, min or both", at)
		case m.Max != nil && m.Min != nil && *m.Min > *m.Max:
			v.errorf(at+".metrics.min", "min %v is above max %v", *m.Min, *m.Max)
		}
		v.metricsAuth(at+".metrics.auth", m.Auth) // metricsauth.go
	}
}

func checkHTTPURL(s string) error {
	// "{service}" stands for a Service name, filled in at verification.
	u, err := url.Parse(strings.ReplaceAll(s, "{service}", "service"))
	if err != nil {
		return fmt.Errorf("not a URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("want an http:// or https:// URL")
	}
	if u.Host == "" {
		return fmt.Errorf("missing host")
	}
	return nil
}

func quoteList(names []string) string {
	if len(names) == 0 {
		return "no clusters"
	}
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}

// writeBack checks spec.writeBack.
func (v *validator) writeBack() {
	wb := v.p.Spec.WriteBack
	if wb == nil || v.fields.Failed("spec.writeBack.mode") {
		return
	}
	switch {
	case wb.Mode == "":
		v.errorf("spec.writeBack", "missing required field \"mode\" in spec.writeBack: %q or %q", WriteBackCommit, WriteBackBranch)
	case wb.Mode != WriteBackCommit && wb.Mode != WriteBackBranch:
		v.errorf("spec.writeBack.mode", "bad write-back mode %q: want %q (push to the followed branch) or %q (push a branch for review)",
			wb.Mode, WriteBackCommit, WriteBackBranch)
	}
}
