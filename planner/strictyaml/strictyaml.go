// Package strictyaml decodes ebb's own YAML files (pipelines, the daemon config) strictly: an
// unknown field or a value of the wrong type is an error located at `file:line:col`, and every
// error of a document is collected rather than the first one only, so a user fixes a file in one
// pass. Kubernetes manifests are not decoded here; kustomize reads those.
package strictyaml

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// maxDepth bounds nesting (and alias chains), so hostile input cannot exhaust the stack.
const maxDepth = 64

// maxAliases bounds how many aliases a document may expand. The parser does not expand them,
// the decoder does, so without a bound a "billion laughs" document of nested aliases would
// take exponential time.
const maxAliases = 1000

// Pos is a position in a file, 1-based.
type Pos struct {
	Line int
	Col  int
}

// Error is one problem at one place in one file.
type Error struct {
	File string
	Pos  Pos
	Msg  string
}

// Error formats the problem as `file:line:col: message`, the form editors and CI annotate.
func (e *Error) Error() string {
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Pos.Line, e.Pos.Col, e.Msg)
}

// ErrorList is every problem found in one or more files, in file and position order once
// sorted.
type ErrorList []*Error

// Error joins the problems one per line.
func (l ErrorList) Error() string {
	msgs := make([]string, len(l))
	for i, e := range l {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Err returns nil for an empty list, so `return list.Err()` never yields a typed nil error.
func (l ErrorList) Err() error {
	if len(l) == 0 {
		return nil
	}
	return l
}

// Sort orders the problems by file, line and column, keeping the order of equal positions.
func (l ErrorList) Sort() {
	sort.SliceStable(l, func(i, j int) bool {
		a, b := l[i], l[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Pos.Line != b.Pos.Line {
			return a.Pos.Line < b.Pos.Line
		}
		return a.Pos.Col < b.Pos.Col
	})
}

// Fields records, for each field path such as `spec.stages[1].cluster`, where its value is
// and whether it failed to decode, so checks made after decoding can point at the right line
// and stay quiet about a field already reported.
type Fields struct {
	pos    map[string]Pos
	failed map[string]bool
}

// Lookup returns the position of path, or of its nearest ancestor that was present in the
// file: a missing field is reported where its parent is.
func (f *Fields) Lookup(path string) Pos {
	if f == nil {
		return Pos{Line: 1, Col: 1}
	}
	for {
		if pos, ok := f.pos[path]; ok {
			return pos
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return f.pos[""]
		}
		path = path[:i]
	}
}

// Has reports whether the field was written in the file (possibly with a wrong value).
func (f *Fields) Has(path string) bool {
	if f == nil {
		return false
	}
	_, ok := f.pos[path]
	return ok
}

// Failed reports whether the field was written but could not be decoded.
func (f *Fields) Failed(path string) bool {
	return f != nil && f.failed[path]
}

// NodeDecoder is implemented by types that decode themselves from a YAML node, such as
// durations and enums. The returned error's text becomes the message at the node's position.
type NodeDecoder interface {
	DecodeNode(n *yaml.Node) error
}

// Defaulter is implemented by structs that fill in defaults before their fields are decoded,
// so a field absent from the file keeps its documented default.
type Defaulter interface {
	SetDefaults()
}

// ParseDocuments parses data into its YAML documents, within DefaultLimits. A syntax error is
// returned as an ErrorList with the line the parser reports; the parser gives no column, so it
// is 1. A limit exceeded is returned located where it is.
func ParseDocuments(file string, data []byte) ([]*yaml.Node, error) {
	var docs []*yaml.Node
	_, err := eachDocument(file, data, DefaultLimits(), func(doc *yaml.Node) error {
		docs = append(docs, doc)
		return nil
	})
	var (
		syntax *syntaxErr
		limit  *LimitError
	)
	switch {
	case errors.As(err, &syntax):
		return nil, ErrorList{syntaxError(file, data, syntax.err)}
	case errors.As(err, &limit):
		return nil, ErrorList{&limit.At}
	case err != nil:
		return nil, err
	}
	return docs, nil
}

var lineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns the parser's "yaml: line N: msg" into a located Error. The parser often
// names the line where the enclosing block began rather than the offending one, and never a
// column, so the offending line is found as the shortest prefix of the file that fails to
// parse, and the column is where that line's text starts.
func syntaxError(file string, data []byte, err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 1
	if m := lineRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	if l := firstFailingLine(lines); l > 0 {
		line = l
	}
	col := 1
	if line <= len(lines) {
		col += len(lines[line-1]) - len(bytes.TrimLeft(lines[line-1], " \t"))
	}
	return &Error{File: file, Pos: Pos{Line: line, Col: col}, Msg: "invalid YAML: " + msg}
}

// maxBisectLines bounds the search for the failing line; longer files keep the parser's line.
const maxBisectLines = 10000

// firstFailingLine returns the smallest k such that the first k lines fail to parse, or 0.
func firstFailingLine(lines [][]byte) int {
	if len(lines) > maxBisectLines || parses(bytes.Join(lines, nil)) {
		return 0
	}
	lo, hi := 1, len(lines)
	for lo < hi {
		mid := (lo + hi) / 2
		if parses(bytes.Join(lines[:mid], nil)) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// parses reports whether every document of data parses.
func parses(data []byte) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			return errors.Is(err, io.EOF)
		}
	}
}

// Decode decodes a document node into the struct pointed to by into, collecting every
// unknown field and type mismatch, and records the position of each decoded field.
func Decode(file string, doc *yaml.Node, into any) (*Fields, ErrorList) {
	d := &decoder{file: file, fields: &Fields{pos: map[string]Pos{}, failed: map[string]bool{}}}
	n := doc
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	d.fields.pos[""] = pos(n)
	d.decode(n, reflect.ValueOf(into).Elem(), "", 0)
	return d.fields, d.errs
}

type decoder struct {
	file    string
	fields  *Fields
	errs    ErrorList
	aliases int
}

// errorf reports a problem at node n; path is the field it failed to decode.
func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	d.fields.failed[path] = true
	d.errs = append(d.errs, &Error{File: d.file, Pos: pos(n), Msg: fmt.Sprintf(format, args...)})
}

func pos(n *yaml.Node) Pos { return Pos{Line: n.Line, Col: n.Column} }

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

var nodeDecoderType = reflect.TypeFor[NodeDecoder]()

// decode stores n into v, which is addressable. path names v for messages and Positions.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string, depth int) {
	if depth > maxDepth {
		d.errorf(n, path, "%s: nested too deeply", displayPath(path))
		return
	}
	if n.Kind == yaml.AliasNode {
		if d.aliases++; d.aliases > maxAliases {
			if d.aliases == maxAliases+1 {
				d.errorf(n, path, "%s: too many aliases (more than %d)", displayPath(path), maxAliases)
			}
			return
		}
		d.decode(n.Alias, v, path, depth+1)
		return
	}
	d.fields.pos[path] = pos(n)
	if isNull(n) {
		return // absent and null mean the same: the default stays
	}
	if v.CanAddr() && v.Addr().Type().Implements(nodeDecoderType) {
		if err := v.Addr().Interface().(NodeDecoder).DecodeNode(n); err != nil {
			d.errorf(n, path, "%s: %v", displayPath(path), err)
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		elem := reflect.New(v.Type().Elem())
		setDefaults(elem)
		d.decode(n, elem.Elem(), path, depth+1)
		v.Set(elem)
	case reflect.Struct:
		d.decodeStruct(n, v, path, depth)
	case reflect.Slice:
		d.decodeSlice(n, v, path, depth)
	case reflect.Map:
		d.decodeMap(n, v, path, depth)
	case reflect.String:
		if s, ok := d.scalar(n, path, "a string", "!!str"); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		if s, ok := d.scalar(n, path, "a boolean (true or false)", "!!bool"); ok {
			b, _ := strconv.ParseBool(strings.ToLower(s))
			v.SetBool(b)
		}
	case reflect.Int, reflect.Int32, reflect.Int64:
		if s, ok := d.scalar(n, path, "an integer", "!!int"); ok {
			i, err := strconv.ParseInt(s, 0, v.Type().Bits())
			if err != nil {
				d.errorf(n, path, "%s: integer %s is out of range", displayPath(path), s)
				return
			}
			v.SetInt(i)
		}
	case reflect.Float64:
		if s, ok := d.scalar(n, path, "a number", "!!int", "!!float"); ok {
			f, err := strconv.ParseFloat(strings.ReplaceAll(s, "_", ""), 64)
			if err != nil {
				d.errorf(n, path, "%s: expected a number, got %q", displayPath(path), s)
				return
			}
			v.SetFloat(f)
		}
	default:
		d.errorf(n, path, "%s: cannot decode into %s", displayPath(path), v.Type())
	}
}

// scalar returns n's value when n is a scalar with one of the wanted tags.
func (d *decoder) scalar(n *yaml.Node, path, want string, tags ...string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.errorf(n, path, "%s: expected %s, got %s", displayPath(path), want, Describe(n))
		return "", false
	}
	for _, t := range tags {
		if n.ShortTag() == t {
			return n.Value, true
		}
	}
	hint := ""
	if tags[0] == "!!str" {
		hint = "; quote it to make it a string"
	}
	d.errorf(n, path, "%s: expected %s, got %s%s", displayPath(path), want, Describe(n), hint)
	return "", false
}

// Describe names what a node holds, for "expected X, got Y" messages.
func Describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return Describe(n.Alias)
	}
	switch n.ShortTag() {
	case "!!int", "!!float":
		return "the number " + n.Value
	case "!!bool":
		return "the boolean " + n.Value
	case "!!null":
		return "null"
	case "!!str":
		return strconv.Quote(n.Value)
	}
	return fmt.Sprintf("%s %q", n.ShortTag(), n.Value)
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string, depth int) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "%s: expected a mapping, got %s", displayPath(path), Describe(n))
		return
	}
	fields := structFields(v.Type())
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		idx, ok := fields[key.Value]
		if !ok || key.Kind != yaml.ScalarNode {
			d.errorf(key, joinPath(path, key.Value), "unknown field %q%s", key.Value, inPath(path))
			continue
		}
		d.decode(val, v.Field(idx), joinPath(path, key.Value), depth+1)
	}
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string, depth int) {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "%s: expected a list, got %s", displayPath(path), Describe(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		setDefaults(s.Index(i).Addr())
		d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i), depth+1)
	}
	v.Set(s)
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string, depth int) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "%s: expected a mapping, got %s", displayPath(path), Describe(n))
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		d.errorf(n, path, "%s: cannot decode into %s", displayPath(path), v.Type())
		return
	}
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		if key.Kind != yaml.ScalarNode {
			d.errorf(key, path, "%s: keys must be strings, got %s", displayPath(path), Describe(key))
			continue
		}
		elem := reflect.New(v.Type().Elem())
		setDefaults(elem)
		d.decode(val, elem.Elem(), joinPath(path, key.Value), depth+1)
		m.SetMapIndex(reflect.ValueOf(key.Value).Convert(v.Type().Key()), elem.Elem())
	}
	v.Set(m)
}

// setDefaults calls SetDefaults on a freshly allocated value that has one.
func setDefaults(ptr reflect.Value) {
	if d, ok := ptr.Interface().(Defaulter); ok {
		d.SetDefaults()
	}
}

// structFields maps each field's `json` name to its index. Fields tagged "-" are not decoded.
func structFields(t reflect.Type) map[string]int {
	fields := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = i
	}
	return fields
}

func joinPath(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func inPath(path string) string {
	if path == "" {
		return ""
	}
	return " in " + path
}

func displayPath(path string) string {
	if path == "" {
		return "document"
	}
	return path
}
