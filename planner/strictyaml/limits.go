package strictyaml

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"go.yaml.in/yaml/v3"
)

// Limits bound the shape of a YAML file, so that what reads it next cannot be made to expand
// aliases without end ("billion laughs"), recurse without end, or spend time quadratic in a
// mapping's size. The decoder of this package reads ebb's own files within DefaultLimits; the
// planner checks manifests with the limits of the daemon config before kustomize reads them,
// because kustomize expands every alias into a copy (kyaml's DeAnchor) and merges each
// mapping's keys one by one into a copy of it.
type Limits struct {
	// MaxDocuments is how many documents a file may hold.
	MaxDocuments int
	// MaxAliases is how many aliases a file may expand, an alias inside an aliased node
	// counting once per expansion, as a reader expanding them all would. Whatever their number,
	// aliases may add at most as many nodes as the file has, and aliasSlack more: a handful of
	// aliases to one large node is as much a bomb as many small ones.
	MaxAliases int
	// MaxDepth is how deeply a file's nodes may nest, aliases expanded: the most collections
	// (mappings and lists) that may enclose a node.
	MaxDepth int
	// MaxMappingKeys is how many keys one mapping may have.
	MaxMappingKeys int
}

// DefaultLimits returns the limits of ebb's own files: pipelines and the daemon config.
func DefaultLimits() Limits {
	return Limits{MaxDocuments: 1000, MaxAliases: maxAliases, MaxDepth: maxDepth, MaxMappingKeys: 1000}
}

// aliasSlack is how many nodes aliases may add to a file beyond doubling it, so that a small
// file may use anchors freely.
const aliasSlack = 10000

// Limit names one of the Limits, in a LimitError.
type Limit string

// The limits a LimitError names.
const (
	LimitDocuments   Limit = "documents"
	LimitAliases     Limit = "aliases"
	LimitDepth       Limit = "depth"
	LimitMappingKeys Limit = "mappingKeys"
)

// LimitError is a file exceeding one of the Limits, located where it does.
type LimitError struct {
	// At is the problem, located.
	At Error
	// Limit is the limit exceeded, Max its value.
	Limit Limit
	Max   int
}

// Error formats the problem as `file:line:col: message`.
func (e *LimitError) Error() string { return e.At.Error() }

// Unwrap returns the located error, so errors.As finds an *Error.
func (e *LimitError) Unwrap() error { return &e.At }

// Check parses data as the documents of one file and returns how many there are, or the first
// limit they exceed as a *LimitError. A syntax error is not Check's to report: it returns the
// count of the documents before it and no error, leaving the message to the reader whose
// input the file is (the parse here is the same, so that reader fails at the same place, and
// nothing past the error is read by either).
func Check(file string, data []byte, l Limits) (int, error) {
	n, err := eachDocument(file, data, l, func(*yaml.Node) error { return nil })
	var syntax *syntaxErr
	if errors.As(err, &syntax) {
		return n, nil
	}
	return n, err
}

// syntaxErr is a parse error of eachDocument.
type syntaxErr struct{ err error }

func (e *syntaxErr) Error() string { return e.err.Error() }

// eachDocument parses the documents of data one at a time, checks each against l and calls fn
// with it. Null documents are skipped and not counted. A parse error is a *syntaxErr.
func eachDocument(file string, data []byte, l Limits, fn func(*yaml.Node) error) (int, error) {
	c := &checker{file: file, l: l, memo: map[*yaml.Node]shape{}, busy: map[*yaml.Node]bool{}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	n := 0
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				return n, c.finish()
			}
			return n, &syntaxErr{err}
		}
		if len(doc.Content) == 0 || isNull(doc.Content[0]) {
			continue
		}
		if n++; l.MaxDocuments > 0 && n > l.MaxDocuments {
			return n, c.limit(doc.Content[0], LimitDocuments, l.MaxDocuments, "more than %d YAML documents in one file", l.MaxDocuments)
		}
		if err := c.document(&doc); err != nil {
			return n, err
		}
		if err := fn(&doc); err != nil {
			return n, err
		}
	}
}

// shape is what a node amounts to once its aliases are expanded.
type shape struct {
	own      int64 // nodes written in the file, an alias counting as one
	expanded int64 // nodes with every alias expanded
	aliases  int64 // alias expansions, nested ones included
	height   int   // levels, aliases expanded
}

// checker walks each node once; the shape of an anchored node is remembered, so an alias costs
// no more to check than any other node, however much it expands to.
type checker struct {
	file string
	l    Limits
	memo map[*yaml.Node]shape
	busy map[*yaml.Node]bool // anchored nodes being walked: an alias to one is a cycle

	aliases, own, expanded int64
	biggest                *yaml.Node // the alias that expands to the most nodes
	biggestSize            int64
	err                    error
}

func (c *checker) limit(n *yaml.Node, which Limit, max int, format string, args ...any) error {
	if c.err == nil {
		c.err = &LimitError{At: Error{File: c.file, Pos: pos(n), Msg: fmt.Sprintf(format, args...)}, Limit: which, Max: max}
	}
	return c.err
}

// document walks one document and adds it to the file's counts.
func (c *checker) document(doc *yaml.Node) error {
	s := c.walk(doc, -1) // the document's top node is at depth 0
	c.own += s.own
	c.expanded += s.expanded
	return c.err
}

// finish checks what can only be judged for the whole file: how much aliases added to it.
func (c *checker) finish() error {
	if c.err == nil && c.l.MaxAliases > 0 && c.expanded-c.own > c.own+aliasSlack {
		return c.limit(c.biggest, LimitAliases, c.l.MaxAliases,
			"aliases expand the file from %d to %d YAML nodes; they may add at most as many as it has, plus %d", c.own, c.expanded, aliasSlack)
	}
	return c.err
}

// walk returns n's shape; depth is how many collections enclose n.
func (c *checker) walk(n *yaml.Node, depth int) shape {
	if c.err != nil {
		return shape{}
	}
	if s, ok := c.memo[n]; ok {
		return s
	}
	if c.l.MaxDepth > 0 && depth > c.l.MaxDepth {
		c.limit(n, LimitDepth, c.l.MaxDepth, "nested deeper than %d levels", c.l.MaxDepth)
		return shape{}
	}
	if n.Kind == yaml.AliasNode {
		return c.alias(n, depth)
	}
	if n.Kind == yaml.MappingNode && c.l.MaxMappingKeys > 0 && len(n.Content)/2 > c.l.MaxMappingKeys {
		c.limit(n, LimitMappingKeys, c.l.MaxMappingKeys, "a mapping with %d keys, more than %d", len(n.Content)/2, c.l.MaxMappingKeys)
		return shape{}
	}
	if n.Anchor != "" {
		c.busy[n] = true
		defer delete(c.busy, n)
	}
	s := shape{own: 1, expanded: 1, height: 1}
	for _, child := range n.Content {
		cs := c.walk(child, depth+1)
		s.own += cs.own
		s.expanded += cs.expanded
		s.aliases += cs.aliases
		s.height = max(s.height, cs.height+1)
	}
	if n.Anchor != "" {
		c.memo[n] = s
	}
	return s
}

// alias returns the shape of an alias expanded, counting its expansions against the limit.
func (c *checker) alias(n *yaml.Node, depth int) shape {
	target := n.Alias
	if target == nil || c.busy[target] {
		c.limit(n, LimitAliases, c.l.MaxAliases, "alias *%s refers to a node that contains it", n.Value)
		return shape{}
	}
	t, ok := c.memo[target]
	if !ok {
		t = c.walk(target, depth) // not seen yet (the parser resolves anchors in order, so rarely)
	}
	if c.l.MaxDepth > 0 && depth+t.height-1 > c.l.MaxDepth {
		c.limit(n, LimitDepth, c.l.MaxDepth, "nested deeper than %d levels once alias *%s is expanded", c.l.MaxDepth, n.Value)
		return shape{}
	}
	if c.aliases += 1 + t.aliases; c.l.MaxAliases > 0 && c.aliases > int64(c.l.MaxAliases) {
		c.limit(n, LimitAliases, c.l.MaxAliases, "more than %d aliases to expand (counting those inside aliased nodes once per expansion)", c.l.MaxAliases)
		return shape{}
	}
	if t.expanded > c.biggestSize {
		c.biggest, c.biggestSize = n, t.expanded
	}
	return shape{own: 1, expanded: t.expanded, aliases: 1 + t.aliases, height: t.height}
}
