package planner

import (
	"bytes"
	"regexp"

	"go.yaml.in/yaml/v3"

	"ebb.dev/ebb/planner/strictyaml"
)

// kindConfig is the daemon's config document; it may sit in the repository beside pipelines.
const kindConfig = "Config"

// ebbDocRE finds a top-level `apiVersion: ebb.dev/…` line: a YAML file that has one is one of
// ebb's own files and is parsed strictly; every other YAML file is a manifest and is skipped.
var ebbDocRE = regexp.MustCompile(`(?m)^apiVersion:[ \t]*["']?ebb\.dev/`)

// IsPipelineFile reports whether data looks like one of ebb's own files, to be parsed by
// ParseFile. It is cheap, so the whole repository can be scanned.
func IsPipelineFile(data []byte) bool {
	return ebbDocRE.Match(data)
}

// ParseFile strictly parses every pipeline document in one file and checks what can be
// checked without the repository or the cluster. It returns the pipelines only when the file
// has no error at all, and otherwise every error of the file, located at `file:line:col`, as
// a strictyaml.ErrorList.
func ParseFile(file string, data []byte, opts Options) ([]*Pipeline, error) {
	pipelines, errs := parseFile(file, data, opts)
	if len(errs) > 0 {
		return nil, errs
	}
	return pipelines, nil
}

// parseFile is ParseFile that also returns, beside the errors, the pipelines of a file that
// has some: Load needs the names a broken file declares.
func parseFile(file string, data []byte, opts Options) ([]*Pipeline, strictyaml.ErrorList) {
	docs, err := strictyaml.ParseDocuments(file, data)
	if err != nil {
		return nil, asErrorList(file, err)
	}
	var (
		pipelines []*Pipeline
		errs      strictyaml.ErrorList
	)
	for _, doc := range docs {
		if isConfigDocument(doc) {
			continue
		}
		p, docErrs := parseDocument(file, doc)
		errs = append(errs, docErrs...)
		errs = append(errs, validateSpec(p, opts)...)
		pipelines = append(pipelines, p)
	}
	errs = append(errs, duplicateNames(pipelines)...)
	if len(errs) > 0 {
		return pipelines, dedupe(errs)
	}
	return pipelines, nil
}

// dedupe sorts errors and keeps the first of several at one position: a field that failed to
// decode is reported once, not again by the checks that then see its zero value.
func dedupe(errs strictyaml.ErrorList) strictyaml.ErrorList {
	errs.Sort()
	out := errs[:0]
	for i, e := range errs {
		if i > 0 && e.File == errs[i-1].File && e.Pos == errs[i-1].Pos {
			continue
		}
		out = append(out, e)
	}
	return out
}

// parseDocument decodes one document into a Pipeline, collecting unknown fields and type
// errors.
func parseDocument(file string, doc *yaml.Node) (*Pipeline, strictyaml.ErrorList) {
	p := &Pipeline{File: file}
	fields, errs := strictyaml.Decode(file, doc, p)
	p.fields = fields
	return p, errs
}

// isConfigDocument reports whether a document is the daemon's Config, which the planner
// leaves to the config package.
func isConfigDocument(doc *yaml.Node) bool {
	n := doc
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	if n.Kind != yaml.MappingNode {
		return false
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "kind" {
			return n.Content[i+1].Value == kindConfig
		}
	}
	return false
}

// duplicateNames reports a pipeline name used twice in one file.
func duplicateNames(pipelines []*Pipeline) strictyaml.ErrorList {
	var errs strictyaml.ErrorList
	seen := map[string]bool{}
	for _, p := range pipelines {
		name := p.Metadata.Name
		if name == "" {
			continue
		}
		if seen[name] {
			errs = append(errs, p.errorAt("metadata.name", "duplicate pipeline name %q", name))
		}
		seen[name] = true
	}
	return errs
}

// trimBOM drops a UTF-8 byte-order mark some editors write.
func trimBOM(data []byte) []byte {
	return bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
}
