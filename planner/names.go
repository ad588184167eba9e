package planner

import (
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// docSeparatorRE splits a file into its YAML documents.
var docSeparatorRE = regexp.MustCompile(`(?m)^---[ \t]*(?:#.*)?$`)

// Patterns that find a document's kind and metadata.name when it does not parse: block style
// (`metadata:` then an indented `name:`) or flow style (`metadata: {name: web}`).
var (
	kindRE      = regexp.MustCompile(`(?m)^kind:[ \t]*["']?([A-Za-z]+)`)
	blockNameRE = regexp.MustCompile(`(?m)^metadata:[ \t]*(?:#.*)?\n(?:[ \t]+.*\n|[ \t]*\n)*?[ \t]+name:[ \t]*["']?([A-Za-z0-9][-A-Za-z0-9._]*)`)
	flowNameRE  = regexp.MustCompile(`(?m)^metadata:[ \t]*\{[^}]*\bname:[ \t]*["']?([A-Za-z0-9][-A-Za-z0-9._]*)`)
)

// NamesIn returns the metadata.name of every pipeline document of a file, as far as they can
// be read, even when the file does not parse or validate: what a broken file was meant to
// define, so its errors can be reported on those pipelines. A document that does not parse is
// searched for a `metadata:` … `name:` line instead; one whose name cannot be found at all is
// left out. Config documents are not pipelines.
func NamesIn(data []byte) []string {
	var names []string
	for _, doc := range docSeparatorRE.Split(string(trimBOM(data)), -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		kind, name := readHeader(doc)
		if kind == kindConfig || name == "" {
			continue
		}
		names = append(names, name)
	}
	return names
}

// readHeader reads a document's kind and metadata.name, by parsing it when it parses and by
// pattern otherwise.
func readHeader(doc string) (kind, name string) {
	var header struct {
		Kind     string `yaml:"kind"`
		Metadata struct {
			Name string `yaml:"name"`
		} `yaml:"metadata"`
	}
	if err := yaml.Unmarshal([]byte(doc), &header); err == nil {
		return header.Kind, header.Metadata.Name
	}
	if m := kindRE.FindStringSubmatch(doc); m != nil {
		kind = m[1]
	}
	for _, re := range []*regexp.Regexp{blockNameRE, flowNameRE} {
		if m := re.FindStringSubmatch(doc); m != nil {
			return kind, m[1]
		}
	}
	return kind, ""
}
