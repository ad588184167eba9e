package strictyaml

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

type doc struct {
	Name  string   `json:"name"`
	Items []item   `json:"items"`
	Tags  []string `json:"tags"`
}

type item struct {
	Count int `json:"count"`
}

func (i *item) SetDefaults() { i.Count = 7 }

func TestDecode(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want doc
		errs []string
	}{
		{"defaults and aliases", "name: &n x\nitems: [{}, {count: 2}]\ntags: [*n]\n",
			doc{Name: "x", Items: []item{{Count: 7}, {Count: 2}}, Tags: []string{"x"}}, nil},
		{"every error at once", "name: [a]\nitems: [{count: two}, {size: 1}]\nextra: 1\n",
			doc{Items: []item{{Count: 7}, {Count: 7}}}, []string{
				"f.yaml:1:7: name: expected a string, got a list",
				"f.yaml:2:17: items[0].count: expected an integer, got \"two\"",
				"f.yaml:2:24: unknown field \"size\" in items[1]",
				"f.yaml:3:1: unknown field \"extra\"",
			}},
		{"syntax error line and column", "name: x\nitems:\n  - count: 1\n - count: 2\n", doc{}, []string{
			"f.yaml:4:2: invalid YAML: did not find expected key",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got doc
			docs, err := ParseDocuments("f.yaml", []byte(tt.yaml))
			if err != nil {
				assert.Equal(t, tt.errs, strings.Split(err.Error(), "\n"))
				return
			}
			require.Len(t, docs, 1)
			_, errs := Decode("f.yaml", docs[0], &got)
			errs.Sort()
			if tt.errs == nil {
				assert.Empty(t, errs)
			} else {
				assert.Equal(t, tt.errs, strings.Split(errs.Error(), "\n"))
			}
			assert.Equal(t, tt.want, got)
		})
	}
}

// aliasBomb is a "billion laughs" document: ten levels of ten aliases each.
func aliasBomb(key string) string {
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i <= 9; i++ {
		b.WriteString("a" + string(rune('0'+i)) + ": &a" + string(rune('0'+i)) + " [")
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*a" + string(rune('0'+i-1)))
		}
		b.WriteString("]\n")
	}
	b.WriteString(key + ": *a9\n")
	return b.String()
}

// TestDecodeAliasBomb checks that nested aliases ("billion laughs") are cut off, not expanded:
// by ParseDocuments, located at the alias that crosses the limit, and by Decode given such a
// document by other means.
func TestDecodeAliasBomb(t *testing.T) {
	bomb := aliasBomb("tags")
	_, err := ParseDocuments("bomb.yaml", []byte(bomb))
	assert.EqualError(t, err, "bomb.yaml:4:45: more than 1000 aliases to expand (counting those inside aliased nodes once per expansion)")

	var doc yaml.Node
	require.NoError(t, yaml.Unmarshal([]byte(bomb), &doc))
	var got struct {
		Tags [][][][][][][][][][]string `json:"tags"`
	}
	_, errs := Decode("bomb.yaml", &doc, &got)
	assert.Contains(t, errs.Error(), "too many aliases (more than 1000)")
}

// TestCheck checks each limit at its boundary, where it is reported, and that a file Check
// cannot parse is left to its reader.
func TestCheck(t *testing.T) {
	limits := Limits{MaxDocuments: 3, MaxAliases: 20, MaxDepth: 4, MaxMappingKeys: 3}
	nested := func(levels int) string { // levels of mappings below the document's top mapping
		return strings.Repeat("{a: ", levels) + "x" + strings.Repeat("}", levels) + "\n"
	}
	big := "base: &b [" + strings.Repeat("1, ", 3000) + "1]\n"
	tests := []struct {
		name, data string
		docs       int
		err        string
		limit      Limit
	}{
		{"documents at the limit", "a: 1\n---\nb: 2\n---\n---\nc: 3\n", 3, "", ""},
		{"one document too many", "a: 1\n---\nb: 2\n---\nc: 3\n---\nd: 4\n", 4, "f.yaml:7:1: more than 3 YAML documents in one file", LimitDocuments},
		{"depth at the limit", "top: " + nested(3), 1, "", ""},
		{"one level too deep", "top: " + nested(4), 1, "f.yaml:1:19: nested deeper than 4 levels", LimitDepth},
		{"too deep once an alias is expanded", "x: &x " + nested(2) + "top: {y: {z: *x}}\n", 1, "f.yaml:2:14: nested deeper than 4 levels once alias *x is expanded", LimitDepth},
		{"mapping keys at the limit", "{a: 1, b: 2, c: 3}\n", 1, "", ""},
		{"one key too many", "top:\n  {a: 1, b: 2, c: 3, d: 4}\n", 1, "f.yaml:2:3: a mapping with 4 keys, more than 3", LimitMappingKeys},
		{"aliases at the limit", "a: &a [x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b, *b]\n", 1, "", ""},
		{"one alias too many", "a: &a [x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b, *b, *a, *a]\n", 1,
			"f.yaml:3:25: more than 20 aliases to expand (counting those inside aliased nodes once per expansion)", LimitAliases},
		{"a few aliases to a big node", big + "c: [*b, *b, *b, *b, *b, *b]\n", 1,
			"f.yaml:2:5: aliases expand the file from 3013 to 21019 YAML nodes; they may add at most as many as it has, plus 10000", LimitAliases},
		{"aliases across documents", "a: &a [x]\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n---\na: &a [x]\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n", 2,
			"f.yaml:5:45: more than 20 aliases to expand (counting those inside aliased nodes once per expansion)", LimitAliases},
		{"a syntax error is left to the reader", "a: 1\n---\nb: [\n", 1, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			docs, err := Check("f.yaml", []byte(tt.data), limits)
			assert.Equal(t, tt.docs, docs)
			if tt.err == "" {
				assert.NoError(t, err)
				return
			}
			require.EqualError(t, err, tt.err)
			var le *LimitError
			require.ErrorAs(t, err, &le)
			assert.Equal(t, tt.limit, le.Limit)
			var located *Error
			assert.ErrorAs(t, err, &located)
		})
	}
}

// TestCheckBombIsCheap checks that the billion laughs is refused without being expanded: an
// expansion would take hours and terabytes, the check a walk over its 124 nodes.
func TestCheckBombIsCheap(t *testing.T) {
	limits := Limits{MaxAliases: 1 << 40, MaxDepth: 100}
	_, err := Check("bomb.yaml", []byte(aliasBomb("tags")), limits)
	assert.EqualError(t, err, "bomb.yaml:11:7: aliases expand the file from 124 to 23456790134 YAML nodes; they may add at most as many as it has, plus 10000")
}
