package planner

import (
	"bytes"
	"errors"
	"fmt"
	"path"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"helm.sh/helm/v3/pkg/chart"
)

// errNoFetch refuses every schema a values.schema.json refers to by URL: Helm would fetch
// http(s) and file URLs, from the network or the daemon's own disk.
var errNoFetch = errors.New("ebb fetches no schema: a values.schema.json may refer only to its own definitions")

// noFetch is a jsonschema loader that loads nothing.
type noFetch struct{}

func (noFetch) Load(url string) (any, error) { return nil, fmt.Errorf("%s: %w", url, errNoFetch) }

// checkSchemas checks the values of a chart, and of each of its dependencies, against the
// chart's values.schema.json, as Helm does, but offline: a schema's $ref to another document
// is an error, not a fetch. The error is located at the schema file.
func checkSchemas(ch *chart.Chart, chartDir string, vals map[string]any) error {
	if ch.Schema != nil {
		if err := checkSchema(path.Join(chartDir, "values.schema.json"), ch.Schema, vals); err != nil {
			return err
		}
	}
	for _, dep := range ch.Dependencies() {
		sub, ok := vals[dep.Name()].(map[string]any)
		if !ok {
			continue
		}
		if err := checkSchemas(dep, path.Join(chartDir, "charts", dep.Name()), sub); err != nil {
			return err
		}
	}
	return nil
}

// checkSchema validates values against one schema document.
func checkSchema(file string, schemaJSON []byte, vals map[string]any) error {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(schemaJSON))
	if err != nil {
		return atFile(file, "read the values schema: %v", err)
	}
	c := jsonschema.NewCompiler()
	c.UseLoader(noFetch{})
	const url = "file:///values.schema.json"
	if err := c.AddResource(url, doc); err != nil {
		return atFile(file, "read the values schema: %v", err)
	}
	schema, err := c.Compile(url)
	if err != nil {
		return atFile(file, "compile the values schema: %s", oneLine(err.Error()))
	}
	if err := schema.Validate(vals); err != nil {
		var ve *jsonschema.ValidationError
		msg := err.Error()
		if errors.As(err, &ve) {
			msg = ve.Error()
		}
		return atFile(file, "the values do not match the chart's schema: %s", oneLine(msg))
	}
	return nil
}
