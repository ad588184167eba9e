package planner

import (
	"crypto/sha256"
	"fmt"
	"sync"

	"ebb.dev/ebb/planner/strictyaml"
)

// ParseCache keeps what each pipeline file parsed to, by its path and content, so that Load
// parses again only the files a commit changed: at 500 pipelines, parsing and checking every
// file's fields took 49 ms of each commit's 151 ms Load (the checks against the repository
// still run every time, as what they read may have changed). The pipelines it returns are
// shared between the commits that have the file unchanged, and nobody changes a loaded
// pipeline. Safe for concurrent use; the zero value is ready.
type ParseCache struct {
	mu sync.Mutex
	// opts fingerprints the Options the entries were parsed with: other Options start over.
	opts  string
	files map[string]parsedFile
}

// parsedFile is one file's parse: its content's digest, pipelines and errors.
type parsedFile struct {
	digest    [sha256.Size]byte
	pipelines []*Pipeline
	errs      strictyaml.ErrorList
}

// parse returns parseFile(name, data, opts), from the cache when the file is unchanged.
func (c *ParseCache) parse(name string, data []byte, opts Options) ([]*Pipeline, strictyaml.ErrorList) {
	if c == nil {
		return parseFile(name, data, opts)
	}
	digest, fp := sha256.Sum256(data), optionsPrint(opts)
	c.mu.Lock()
	if c.opts != fp {
		c.opts, c.files = fp, map[string]parsedFile{}
	}
	if f, ok := c.files[name]; ok && f.digest == digest {
		c.mu.Unlock()
		return f.pipelines, f.errs
	}
	c.mu.Unlock()
	pipelines, errs := parseFile(name, data, opts)
	c.mu.Lock()
	if c.opts == fp {
		c.files[name] = parsedFile{digest: digest, pipelines: pipelines, errs: errs}
	}
	c.mu.Unlock()
	return pipelines, errs
}

// keepOnly forgets the files not in names, which the last Load did not find.
func (c *ParseCache) keepOnly(names map[string]bool) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for name := range c.files {
		if !names[name] {
			delete(c.files, name)
		}
	}
}

// optionsPrint fingerprints what parseFile reads of opts.
func optionsPrint(opts Options) string {
	return fmt.Sprintf("%q %t %+v", opts.Clusters, opts.AllowRemoteBases, opts.Limits)
}
