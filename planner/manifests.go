package planner

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"ebb.dev/ebb/planner/strictyaml"
)

// kustomizationFiles are the names kustomize looks for in a directory, in its order.
var kustomizationFiles = []string{"kustomization.yaml", "kustomization.yml", "Kustomization"}

// kustomizationRefFields list other directories or remote bases; they are followed to check
// that every base is inside the repository.
var kustomizationRefFields = []string{"resources", "bases", "components"}

// validateManifests checks each stage's manifests directory against the repository: it must
// exist, be a directory, not lead out through a symlink, and its kustomizations (followed
// through their local bases) must not use remote bases unless allowed.
func validateManifests(p *Pipeline, repo *Repo, opts Options) strictyaml.ErrorList {
	var errs strictyaml.ErrorList
	checked := map[string]bool{}
	for i := range p.Spec.Stages {
		dir, field := p.ManifestsOf(&p.Spec.Stages[i]), p.manifestsField(i)
		if dir == "" || checked[dir] || checkRelativePath(dir) != nil {
			continue // reported by validateSpec
		}
		checked[dir] = true
		real, err := repo.resolve(dir)
		if err != nil {
			errs = append(errs, p.errorAt(field, "manifests path %q: %v", dir, err))
			continue
		}
		if !repo.isDir(real) {
			errs = append(errs, p.errorAt(field, "manifests path %q is not a directory of the repository", dir))
			continue
		}
		errs = append(errs, checkKustomizations(repo, real, opts)...)
	}
	return errs
}

// checkKustomizations walks from dir through the local bases of its kustomization and
// reports remote bases (unless allowed) and bases outside the repository, each at its line in
// the kustomization file.
func checkKustomizations(repo *Repo, dir string, opts Options) strictyaml.ErrorList {
	var errs strictyaml.ErrorList
	seen := map[string]bool{}
	queue := []string{dir}
	for len(queue) > 0 {
		dir := queue[0]
		queue = queue[1:]
		if seen[dir] {
			continue
		}
		seen[dir] = true
		file, refs, err := readKustomizationRefs(repo, dir, opts.Limits.orDefaults().MaxFileBytes)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, ref := range refs {
			next, err := checkRef(repo, dir, ref.Value, opts)
			if err != nil {
				errs = append(errs, &strictyaml.Error{File: file, Pos: strictyaml.Pos{Line: ref.Line, Col: ref.Column}, Msg: err.Error()})
			} else if next != "" {
				queue = append(queue, next)
			}
		}
	}
	return errs
}

// readKustomizationRefs returns the kustomization file of dir and the nodes of its resources,
// bases and components. Files that do not parse are left for kustomize to report when
// rendering; a file over maxFileBytes is an error, at the file, and is not read.
func readKustomizationRefs(repo *Repo, dir string, maxFileBytes int64) (string, []*yaml.Node, *strictyaml.Error) {
	for _, name := range kustomizationFiles {
		file := path.Join(dir, name)
		data, size, err := readLimited(repo.fsys, file, maxFileBytes)
		if errors.Is(err, errTooBig) {
			return file, nil, fileTooBig(file, size, maxFileBytes)
		}
		if err != nil {
			continue
		}
		var doc yaml.Node
		if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
			return file, nil, nil
		}
		m := doc.Content[0]
		var refs []*yaml.Node
		for i := 0; i+1 < len(m.Content); i += 2 {
			if !slices.Contains(kustomizationRefFields, m.Content[i].Value) || m.Content[i+1].Kind != yaml.SequenceNode {
				continue
			}
			for _, item := range m.Content[i+1].Content {
				if item.Kind == yaml.ScalarNode {
					refs = append(refs, item)
				}
			}
		}
		return file, refs, nil
	}
	return "", nil, nil
}

// checkRef checks one entry of a kustomization and returns the repository directory it names,
// if it is one, to be checked in turn.
func checkRef(repo *Repo, dir, ref string, opts Options) (string, error) {
	if isRemoteRef(ref) {
		if opts.AllowRemoteBases {
			return "", nil
		}
		return "", fmt.Errorf("remote base %q is not allowed: the daemon config does not set allowRemoteBases", ref)
	}
	if strings.HasPrefix(ref, "/") {
		return "", fmt.Errorf("resource %q is an absolute path; write it relative to the kustomization", ref)
	}
	joined := path.Join(dir, ref)
	if joined == ".." || strings.HasPrefix(joined, "../") {
		return "", fmt.Errorf("resource %q leaves the repository", ref)
	}
	real, err := repo.resolve(joined)
	if err != nil {
		if errors.Is(err, errOutsideRepo) {
			return "", fmt.Errorf("resource %q: %v", ref, err)
		}
		return "", nil
	}
	if repo.isDir(real) {
		return real, nil
	}
	return "", nil
}

// isRemoteRef reports whether a kustomization entry is a URL or a Git repository spec.
func isRemoteRef(ref string) bool {
	for _, p := range []string{"git@", "git::", "github.com/", "gitlab.com/", "bitbucket.org/", "ssh:", "file:"} {
		if strings.HasPrefix(ref, p) {
			return true
		}
	}
	return strings.Contains(ref, "://") || strings.Contains(ref, "?ref=") || strings.Contains(ref, "?version=")
}
