package strictyaml

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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

// TestDecodeAliasBomb checks that nested aliases ("billion laughs") are cut off, not expanded.
func TestDecodeAliasBomb(t *testing.T) {
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
	b.WriteString("tags: *a9\n")
	docs, err := ParseDocuments("bomb.yaml", []byte(b.String()))
	require.NoError(t, err)
	var got struct {
		Tags [][][][][][][][][][]string `json:"tags"`
	}
	_, errs := Decode("bomb.yaml", docs[0], &got)
	assert.Contains(t, errs.Error(), "too many aliases (more than 1000)")
}
