package planner

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// located is the shape of every parse error: file:line:col: message.
var located = regexp.MustCompile(`^fuzz\.yaml:[0-9]+:[0-9]+: \S`)

// FuzzParseFile feeds arbitrary bytes to the strict parser. No input may make it panic, every
// error must be located, and a file it accepts must hold named pipelines with stages.
// The seed corpus is every pipeline fixture and example of the repository.
func FuzzParseFile(f *testing.F) {
	var seeds []string
	for _, pattern := range []string{
		"testdata/malformed/*.yaml", "testdata/repos/*/pipelines/*.yaml", "testdata/argocd-example-apps/pipelines/*.yaml",
		"../examples/*/pipelines/*.yaml",
	} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, files...)
	}
	if len(seeds) < 10 {
		f.Fatalf("seed corpus has %d files", len(seeds))
	}
	for _, file := range seeds {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("apiVersion: ebb.dev/v1alpha1\nkind: Pipeline\nspec: &a\n  stages: [*a]\n"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nspec: {stages: [*c, *c]}\n"))
	f.Add([]byte("\xef\xbb\xbfapiVersion: ebb.dev/v1alpha1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pipelines, err := ParseFile("fuzz.yaml", data, testClusters)
		if err != nil {
			if pipelines != nil {
				t.Fatalf("pipelines returned with an error")
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !located.MatchString(line) {
					t.Fatalf("error without a location: %q", line)
				}
			}
			return
		}
		for _, p := range pipelines {
			if p.Metadata.Name == "" || len(p.Spec.Stages) == 0 {
				t.Fatalf("accepted a pipeline without name or stages: %+v", p)
			}
		}
	})
}
