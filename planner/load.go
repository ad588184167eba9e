package planner

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strings"

	"ebb.dev/ebb/planner/strictyaml"
)

// Load finds every pipeline file in the repository, parses it strictly and validates it
// against the repository. It returns the valid pipelines, sorted by name, and, as a
// strictyaml.ErrorList, every error of every other file: one bad file never hides or blocks
// the others. Hidden directories such as .git are not searched.
//
// A pipeline name declared in more than one file is an error in each of them, and none of
// those files' pipelines of that name is loaded until only one file declares it: which file
// is "the" pipeline is not decided by the order of their paths, so a new file cannot take
// over a pipeline, its stages or its ledger.
func Load(repo *Repo, opts Options) ([]*Pipeline, error) {
	files, errs, err := findPipelineFiles(repo, opts.Limits.orDefaults().MaxFileBytes)
	if err != nil {
		return nil, err
	}
	var (
		valid    []*Pipeline
		declared []*Pipeline
	)
	found := make(map[string]bool, len(files))
	for _, f := range files {
		found[f.name] = true
		pipelines, fileErrs := loadFile(repo, f.name, f.data, opts)
		errs = append(errs, fileErrs...)
		declared = append(declared, pipelines...)
		if len(fileErrs) == 0 {
			valid = append(valid, pipelines...)
		}
	}
	opts.Parsed.keepOnly(found)
	valid, dupErrs := dropDuplicates(valid, declared)
	errs = append(errs, dupErrs...)
	errs.Sort()
	return valid, errs.Err()
}

// loadFile parses and validates one file. It returns every pipeline the file declares and
// the file's errors; the pipelines are valid only if there are none.
func loadFile(repo *Repo, name string, data []byte, opts Options) ([]*Pipeline, strictyaml.ErrorList) {
	pipelines, errs := opts.Parsed.parse(name, data, opts)
	if len(errs) > 0 {
		return pipelines, errs
	}
	errs = nil // the parse's own list is shared with the cache
	for _, p := range pipelines {
		errs = append(errs, validateManifests(p, repo, opts)...)
		errs = append(errs, helmValidate(p, repo)...)
	}
	return pipelines, errs
}

// dropDuplicates removes from valid every pipeline whose name more than one file declares,
// valid or not, and reports each declaration at its metadata.name, naming the other files.
// A file with errors counts: its author means it to be that pipeline, and fixing its other
// errors must not be what silently changes which file runs.
func dropDuplicates(valid, declared []*Pipeline) ([]*Pipeline, strictyaml.ErrorList) {
	files := map[string][]string{} // name -> the files declaring it, in path order
	for _, p := range declared {
		name := p.Metadata.Name
		if name != "" && !slices.Contains(files[name], p.File) {
			files[name] = append(files[name], p.File)
		}
	}
	var errs strictyaml.ErrorList
	reported := map[string]bool{} // name + file: a name twice in one file is reported once here
	for _, p := range declared {
		name := p.Metadata.Name
		if len(files[name]) < 2 || reported[name+"\x00"+p.File] {
			continue
		}
		reported[name+"\x00"+p.File] = true
		others := slices.DeleteFunc(slices.Clone(files[name]), func(f string) bool { return f == p.File })
		errs = append(errs, p.errorAt("metadata.name",
			"duplicate pipeline name %q: also declared in %s; no pipeline of this name runs until only one file declares it",
			name, strings.Join(others, ", ")))
	}
	out := slices.DeleteFunc(valid, func(p *Pipeline) bool { return len(files[p.Metadata.Name]) > 1 })
	sort.Slice(out, func(i, j int) bool { return out[i].Metadata.Name < out[j].Metadata.Name })
	return out, errs
}

type pipelineFile struct {
	name string
	data []byte
}

// pipelineSniff is how much of a file too big to read is read to tell whether it is a pipeline
// file: its first document's apiVersion is near the top.
const pipelineSniff = 64 << 10

// findPipelineFiles returns the YAML files of the repository that are ebb files, in path
// order. A pipeline file over maxFileBytes is not read but reported, at the file.
func findPipelineFiles(repo *Repo, maxFileBytes int64) ([]pipelineFile, strictyaml.ErrorList, error) {
	var (
		files []pipelineFile
		errs  strictyaml.ErrorList
	)
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
		data, size, err := readLimited(repo.fsys, name, maxFileBytes)
		if errors.Is(err, errTooBig) {
			if head, err := readPrefix(repo.fsys, name, pipelineSniff); err == nil && IsPipelineFile(trimBOM(head)) {
				errs = append(errs, fileTooBig(name, size, maxFileBytes))
			}
			return nil // a manifest: a render that needs it reports it
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		data = trimBOM(data)
		if IsPipelineFile(data) {
			files = append(files, pipelineFile{name: name, data: data})
		}
		return nil
	})
	return files, errs, err
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
