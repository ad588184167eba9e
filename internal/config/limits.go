package config

import (
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/api/resource"

	"ebb.dev/ebb/planner"
	"ebb.dev/ebb/planner/strictyaml"
)

// Limits bound what the planner reads from Git and how long a render may take; each field
// left out keeps planner.DefaultLimits. docs/install.md lists them.
type Limits struct {
	// MaxFileBytes bounds one file of the repository, e.g. 10Mi.
	MaxFileBytes ByteSize `json:"maxFileBytes"`
	// MaxRenderBytes bounds what one render of a stage reads.
	MaxRenderBytes ByteSize `json:"maxRenderBytes"`
	// MaxDocuments bounds the YAML documents one render reads.
	MaxDocuments int `json:"maxDocuments"`
	// MaxYAMLAliases bounds the aliases one manifest expands.
	MaxYAMLAliases int `json:"maxYAMLAliases"`
	// MaxYAMLDepth bounds the nesting of one manifest.
	MaxYAMLDepth int `json:"maxYAMLDepth"`
	// MaxMappingKeys bounds the keys of one mapping of a manifest.
	MaxMappingKeys int `json:"maxMappingKeys"`
	// RenderTimeout bounds one render of a stage, e.g. 10s.
	RenderTimeout Duration `json:"renderTimeout"`
}

// Planner returns the limits for planner.Options: the planner's default for each one not set.
func (l Limits) Planner() planner.Limits {
	out := planner.DefaultLimits()
	set := func(dst *int64, v ByteSize) {
		if v > 0 {
			*dst = int64(v)
		}
	}
	setInt := func(dst *int, v int) {
		if v > 0 {
			*dst = v
		}
	}
	set(&out.MaxFileBytes, l.MaxFileBytes)
	set(&out.MaxRenderBytes, l.MaxRenderBytes)
	setInt(&out.MaxDocuments, l.MaxDocuments)
	setInt(&out.MaxYAMLAliases, l.MaxYAMLAliases)
	setInt(&out.MaxYAMLDepth, l.MaxYAMLDepth)
	setInt(&out.MaxMappingKeys, l.MaxMappingKeys)
	if l.RenderTimeout.Duration > 0 {
		out.RenderTimeout = l.RenderTimeout.Duration
	}
	return out
}

// validate reports counts that are not positive; sizes and durations check themselves.
func (l Limits) validate(errorf func(path, format string, args ...any), fields *strictyaml.Fields) {
	for _, f := range []struct {
		name  string
		value int
	}{{"maxDocuments", l.MaxDocuments}, {"maxYAMLAliases", l.MaxYAMLAliases}, {"maxYAMLDepth", l.MaxYAMLDepth}, {"maxMappingKeys", l.MaxMappingKeys}} {
		path := "limits." + f.name
		if fields.Has(path) && !fields.Failed(path) && f.value <= 0 {
			errorf(path, "%s must be positive, got %d", path, f.value)
		}
	}
}

// ByteSize is a positive number of bytes, written as an integer or a Kubernetes quantity
// such as 10Mi or 50M.
type ByteSize int64

// DecodeNode parses an integer or a quantity.
func (b *ByteSize) DecodeNode(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("expected a size such as 10Mi, got %s", strictyaml.Describe(n))
	}
	q, err := resource.ParseQuantity(n.Value)
	if err != nil || q.Sign() <= 0 {
		return fmt.Errorf("bad size %q: want a positive number of bytes such as 10Mi, 50M or 1048576", n.Value)
	}
	v, ok := q.AsInt64()
	if !ok {
		return fmt.Errorf("bad size %q: too large", n.Value)
	}
	*b = ByteSize(v)
	return nil
}

// Duration is a positive Go duration written as a string, e.g. "10s".
type Duration struct {
	time.Duration
}

// DecodeNode parses a positive duration.
func (d *Duration) DecodeNode(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		return fmt.Errorf("expected a duration such as 10s or 1m, got %s", strictyaml.Describe(n))
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil || v <= 0 {
		return fmt.Errorf("bad duration %q: want a positive duration such as 10s or 1m", n.Value)
	}
	d.Duration = v
	return nil
}
