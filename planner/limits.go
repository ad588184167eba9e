package planner

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	"ebb.dev/ebb/planner/strictyaml"
)

// Limits bound what the planner reads from Git and how long a render may take, so that one
// file — a YAML alias bomb, a 50 MB manifest — fails its own pipeline with a located error
// instead of exhausting the daemon's memory or holding up every other pipeline. A zero field
// takes its default.
//
// The defaults leave real repositories far below them (the podinfo and sock-shop manifests
// are 5–30 KB and render in 5–20 ms; a 1.7 MB CRD of the whole Kubernetes API renders in 0.2 s)
// while a render at the limits takes 2–3 s and 80–110 MiB (BenchmarkRenderAtLimits): well
// within the deadline, and two at once, as many as run on two cores, within the chart's 512 Mi.
type Limits struct {
	// MaxFileBytes bounds one file of the repository: larger files are never read; a render
	// that needs one, or a pipeline file that large, fails. Default 10 MiB.
	MaxFileBytes int64
	// MaxRenderBytes bounds what one render of a stage reads, summed over its files. Default
	// 10 MiB, Argo CD's default for the manifests of one application.
	MaxRenderBytes int64
	// MaxDocuments bounds the YAML documents one render reads. Default 1000: kustomize's time
	// grows with the square of the objects (1000 small Deployments take 1.5s, 2000 take 7s),
	// so a stage of many more would only run into the deadline.
	MaxDocuments int
	// MaxYAMLAliases bounds the aliases a manifest expands, nested ones counted once per
	// expansion; whatever their number, aliases may add at most as many nodes as the file has,
	// and 10000 more. Default 1000, as for pipeline files.
	MaxYAMLAliases int
	// MaxYAMLDepth bounds the nesting of a manifest: the mappings and lists enclosing a value,
	// aliases expanded. Default 100.
	MaxYAMLDepth int
	// MaxMappingKeys bounds the keys of one mapping of a manifest: kustomize reads a mapping in
	// time quadratic in its keys (10000 keys take half a second, 100000 a minute and a half).
	// Default 10000.
	MaxMappingKeys int
	// RenderTimeout bounds one render of a stage, from its start to its release. A render past
	// it fails; kustomize cannot be stopped, so the build goes on in the background, holding one
	// of the renderer's slots, and is not started again for the same inputs. Default 10s:
	// three times what a render at the other limits takes (1000 Deployments, 3s).
	RenderTimeout time.Duration
}

// DefaultLimits returns the limits the daemon and the CLI use unless the daemon config sets
// others.
func DefaultLimits() Limits {
	return Limits{
		MaxFileBytes:   10 << 20,
		MaxRenderBytes: 10 << 20,
		MaxDocuments:   1000,
		MaxYAMLAliases: 1000,
		MaxYAMLDepth:   100,
		MaxMappingKeys: 10000,
		RenderTimeout:  10 * time.Second,
	}
}

// orDefaults fills in the zero fields.
func (l Limits) orDefaults() Limits {
	d := DefaultLimits()
	if l.MaxFileBytes <= 0 {
		l.MaxFileBytes = d.MaxFileBytes
	}
	if l.MaxRenderBytes <= 0 {
		l.MaxRenderBytes = d.MaxRenderBytes
	}
	if l.MaxDocuments <= 0 {
		l.MaxDocuments = d.MaxDocuments
	}
	if l.MaxYAMLAliases <= 0 {
		l.MaxYAMLAliases = d.MaxYAMLAliases
	}
	if l.MaxYAMLDepth <= 0 {
		l.MaxYAMLDepth = d.MaxYAMLDepth
	}
	if l.MaxMappingKeys <= 0 {
		l.MaxMappingKeys = d.MaxMappingKeys
	}
	if l.RenderTimeout <= 0 {
		l.RenderTimeout = d.RenderTimeout
	}
	return l
}

// manifestLimits are the limits of the shape of one manifest file. The documents are counted
// per render, not per file.
func (l Limits) manifestLimits() strictyaml.Limits {
	return strictyaml.Limits{MaxAliases: l.MaxYAMLAliases, MaxDepth: l.MaxYAMLDepth, MaxMappingKeys: l.MaxMappingKeys}
}

// setting names each limit as the daemon config spells it, for messages.
var setting = map[strictyaml.Limit]string{
	strictyaml.LimitAliases:     "limits.maxYAMLAliases",
	strictyaml.LimitDepth:       "limits.maxYAMLDepth",
	strictyaml.LimitMappingKeys: "limits.maxMappingKeys",
	strictyaml.LimitDocuments:   "limits.maxDocuments",
}

// byteSize prints a byte count the way the daemon config takes it: "10Mi", or "52428801
// bytes" when no suffix fits.
func byteSize(n int64) string {
	s := resource.NewQuantity(n, resource.BinarySI).String()
	if strings.Trim(s, "0123456789") == "" {
		return s + " bytes"
	}
	return s
}

// fileTooBig is the error for a file over MaxFileBytes, located at the file.
func fileTooBig(file string, size, max int64) *strictyaml.Error {
	return atFile(file, "the file is %s, over the limit of %s per file (limits.maxFileBytes)", byteSize(size), byteSize(max))
}

// atFile is an error located at the start of a file of the repository.
func atFile(file, format string, args ...any) *strictyaml.Error {
	return &strictyaml.Error{File: file, Pos: strictyaml.Pos{Line: 1, Col: 1}, Msg: fmt.Sprintf(format, args...)}
}

// errTooBig says a file is over MaxFileBytes.
var errTooBig = errors.New("file too big")

// readLimited reads a file of fsys unless it is larger than max bytes, in which case it
// returns its size and errTooBig without reading it. A file that grows while it is read is
// cut at max+1 bytes, which is enough to know it is too big.
func readLimited(fsys fs.FS, name string, max int64) ([]byte, int64, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		return nil, fi.Size(), errTooBig
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, 0, err
	}
	if int64(len(data)) > max {
		return nil, int64(len(data)), errTooBig
	}
	return data, int64(len(data)), nil
}

// readPrefix reads at most n bytes from the start of a file.
func readPrefix(fsys fs.FS, name string, n int64) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}

// repoPath is the repository path of a path of the render's filesystem.
func repoPath(p string) string {
	return strings.TrimPrefix(cleanAbs(p), repoRoot+"/")
}
