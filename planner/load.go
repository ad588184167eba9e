package planner

import (
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"ebb.dev/ebb/planner/strictyaml"
)

// Load finds every pipeline file in the repository, parses it strictly and validates it
// against the repository. It returns the valid pipelines, sorted by name, and, as a
// strictyaml.ErrorList, every error of every other file: one bad file never hides or blocks
// the others. Hidden directories such as .git are not searched.
func Load(repo *Repo, opts Options) ([]*Pipeline, error) {
	files, err := findPipelineFiles(repo)
	if err != nil {
		return nil, err
	}
	var (
		all  []*Pipeline
		errs strictyaml.ErrorList
	)
	for _, f := range files {
		pipelines, fileErrs := loadFile(repo, f.name, f.data, opts)
		errs = append(errs, fileErrs...)
		all = append(all, pipelines...)
	}
	all, dupErrs := dropDuplicates(all)
	errs = append(errs, dupErrs...)
	errs.Sort()
	return all, errs.Err()
}

// loadFile parses and validates one file; its pipelines are returned only if it has no error.
func loadFile(repo *Repo, name string, data []byte, opts Options) ([]*Pipeline, strictyaml.ErrorList) {
	pipelines, err := ParseFile(name, data, opts)
	if err != nil {
		return nil, asErrorList(name, err)
	}
	var errs strictyaml.ErrorList
	for _, p := range pipelines {
		errs = append(errs, validateManifests(p, repo, opts)...)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return pipelines, nil
}

// dropDuplicates keeps the first pipeline of each name (in file order) and reports the others.
func dropDuplicates(pipelines []*Pipeline) ([]*Pipeline, strictyaml.ErrorList) {
	var (
		out  []*Pipeline
		errs strictyaml.ErrorList
	)
	first := map[string]*Pipeline{}
	for _, p := range pipelines {
		if f, ok := first[p.Metadata.Name]; ok {
			errs = append(errs, p.errorAt("metadata.name", "duplicate pipeline name %q, already defined in %s", p.Metadata.Name, f.File))
			continue
		}
		first[p.Metadata.Name] = p
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Metadata.Name < out[j].Metadata.Name })
	return out, errs
}

type pipelineFile struct {
	name string
	data []byte
}

// findPipelineFiles returns the YAML files of the repository that are ebb files, in path
// order.
func findPipelineFiles(repo *Repo) ([]pipelineFile, error) {
	var files []pipelineFile
	err := fs.WalkDir(repo.fsys, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("read repository: %w", err)
		}
		if d.IsDir() {
			if name != "." && strings.HasPrefix(d.Name(), ".") {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !isYAMLName(name) {
			return nil
		}
		data, err := fs.ReadFile(repo.fsys, name)
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		data = trimBOM(data)
		if IsPipelineFile(data) {
			files = append(files, pipelineFile{name: name, data: data})
		}
		return nil
	})
	return files, err
}

func isYAMLName(name string) bool {
	ext := path.Ext(name)
	return ext == ".yaml" || ext == ".yml"
}

// asErrorList makes sure an error of a file is reported as located errors.
func asErrorList(file string, err error) strictyaml.ErrorList {
	if l, ok := err.(strictyaml.ErrorList); ok {
		return l
	}
	return strictyaml.ErrorList{{File: file, Pos: strictyaml.Pos{Line: 1, Col: 1}, Msg: err.Error()}}
}
