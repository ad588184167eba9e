package planner

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"testing"

	"go.yaml.in/yaml/v3"

	"ebb.dev/ebb/planner/strictyaml"
)

// helmValuesSeeds are a values file of the podinfo pipeline and shapes that have broken YAML
// parsers. podinfo's own values files (8 KB) are left out: a syntax error is located by
// parsing prefixes of the file, so mutations of them run a hundred times slower than these
// and the fuzzer explores little else.
func helmValuesSeeds(f *testing.F) {
	for _, file := range []string{
		"testdata/podinfo-chart/values/dev.yaml",
	} {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"))
	f.Add([]byte("a: &a {b: *a}\n"))
	f.Add([]byte("<<: {a: 1}\nb: 2\n"))
	f.Add([]byte("? [a]\n: b\n"))
	f.Add([]byte("t: 2001-12-14t21:59:43.10-05:00\nn: .inf\n"))
	f.Add([]byte("---\na: 1\n---\nb: 2\n"))
	f.Add([]byte("- a\n- b\n"))
	f.Add([]byte("replicaCount: 1\nimage:\n  repository: ghcr.io/stefanprodan/podinfo\n  tag: 6.14.1\nui: {color: \"#34577c\", message: \"\"}\nhpa: {enabled: false, maxReplicas: 10, cpu:}\n"))
}

// FuzzHelmValuesFile feeds arbitrary bytes to the values-file parser. No input may make it
// panic; every error must be located in the file; what it accepts must be values JSON can
// hold, as Helm hands them to templates.
func FuzzHelmValuesFile(f *testing.F) {
	helmValuesSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		vals, err := parseValuesFile("values.yaml", data)
		if err != nil {
			var at *strictyaml.Error
			if !errors.As(err, &at) || at.File != "values.yaml" || at.Pos.Line < 1 {
				t.Fatalf("error without a location in values.yaml: %v", err)
			}
			return
		}
		if _, err := json.Marshal(vals); err != nil {
			t.Fatalf("accepted values JSON cannot hold: %v", err)
		}
	})
}

// FuzzHelmValuesInline feeds arbitrary YAML to the decoder of a pipeline's helm.values. No
// input may make it panic; what it accepts must be values JSON can hold, unchanged by a round
// trip through JSON (so the render cache's key, the values' JSON, means the same values).
func FuzzHelmValuesInline(f *testing.F) {
	helmValuesSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := strictyaml.ParseDocuments("fuzz.yaml", data)
		if err != nil || len(docs) == 0 || len(docs[0].Content) == 0 {
			return
		}
		var v HelmValues
		if err := v.DecodeNode(docs[0].Content[0]); err != nil {
			if docs[0].Content[0].Kind != yaml.MappingNode && v != nil {
				t.Fatalf("values set from a %s", strictyaml.Describe(docs[0].Content[0]))
			}
			return
		}
		out, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("accepted values JSON cannot hold: %v", err)
		}
		again, err := jsonValues(json.RawMessage(out))
		if err != nil {
			t.Fatalf("values do not read back: %v", err)
		}
		if !reflect.DeepEqual(v, again) {
			t.Fatalf("values changed through JSON: %#v -> %#v", v, again)
		}
	})
}
