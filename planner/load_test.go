package planner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLoadExamples checks that every example repository loads without an error.
func TestLoadExamples(t *testing.T) {
	for _, dir := range []string{"rolling-upgrade", "blue-green"} {
		t.Run(dir, func(t *testing.T) {
			pipelines, err := Load(NewRepo(os.DirFS(filepath.Join("..", "examples", dir))), testClusters)
			require.NoError(t, err)
			require.Len(t, pipelines, 1)
			assert.Len(t, pipelines[0].Spec.Stages, 2)
		})
	}
}

// TestLoadOneBadFileBlocksNoOther checks that a file with errors is reported in full while the
// good file of the same repository still loads.
func TestLoadOneBadFileBlocksNoOther(t *testing.T) {
	pipelines, err := Load(NewRepo(os.DirFS("testdata/repos/mixed")), testClusters)
	require.Error(t, err)
	require.Len(t, pipelines, 1)
	assert.Equal(t, "good", pipelines[0].Metadata.Name)
	assert.Equal(t, []string{
		`pipelines/bad.yaml:12:16: manifests path "no/such/dir" is not a directory of the repository`,
		`pipelines/bad.yaml:16:16: manifests path "app/deployment.yaml" is not a directory of the repository`,
	}, strings.Split(err.Error(), "\n"))
}

// pipelineYAML is a valid pipeline file of the given name deploying app/ to namespace ns.
func pipelineYAML(name, ns string) string {
	return `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata:
  name: ` + name + `
spec:
  manifests: app
  service: web
  stages:
  - {name: dev, cluster: dev, namespace: ` + ns + `}
`
}

// TestLoadDuplicateNames checks that a pipeline name declared in two or more files is an
// error at each file's metadata.name, naming the others, that no pipeline of that name
// loads (whichever path sorts first), that an unrelated pipeline still does, and that the
// pipeline loads again once only one file declares its name.
func TestLoadDuplicateNames(t *testing.T) {
	deployment, err := os.ReadFile("testdata/repos/mixed/app/deployment.yaml")
	require.NoError(t, err)
	const also = "no pipeline of this name runs until only one file declares it"
	tests := []struct {
		name   string
		files  map[string]string
		loaded []string // names, sorted
		errs   []string
	}{{
		name: "two files, a third unrelated",
		files: map[string]string{
			"pipelines/web.yaml":      pipelineYAML("web", "web-dev"),
			"pipelines/a-copy.yaml":   pipelineYAML("web", "elsewhere"),
			"pipelines/unrelated.yml": pipelineYAML("other", "other-dev"),
		},
		loaded: []string{"other"},
		errs: []string{
			`pipelines/a-copy.yaml:4:9: duplicate pipeline name "web": also declared in pipelines/web.yaml; ` + also,
			`pipelines/web.yaml:4:9: duplicate pipeline name "web": also declared in pipelines/a-copy.yaml; ` + also,
		},
	}, {
		name: "three files",
		files: map[string]string{
			"a.yaml":           pipelineYAML("web", "a"),
			"pipelines/b.yaml": pipelineYAML("web", "b"),
			"pipelines/c.yaml": pipelineYAML("web", "c"),
		},
		errs: []string{
			`a.yaml:4:9: duplicate pipeline name "web": also declared in pipelines/b.yaml, pipelines/c.yaml; ` + also,
			`pipelines/b.yaml:4:9: duplicate pipeline name "web": also declared in a.yaml, pipelines/c.yaml; ` + also,
			`pipelines/c.yaml:4:9: duplicate pipeline name "web": also declared in a.yaml, pipelines/b.yaml; ` + also,
		},
	}, {
		name: "the other file has an error of its own",
		files: map[string]string{
			"pipelines/web.yaml":  pipelineYAML("web", "web-dev"),
			"pipelines/copy.yaml": strings.Replace(pipelineYAML("web", "elsewhere"), "manifests: app", "manifests: nowhere", 1),
		},
		errs: []string{
			`pipelines/copy.yaml:4:9: duplicate pipeline name "web": also declared in pipelines/web.yaml; ` + also,
			`pipelines/copy.yaml:6:14: manifests path "nowhere" is not a directory of the repository`,
			`pipelines/web.yaml:4:9: duplicate pipeline name "web": also declared in pipelines/copy.yaml; ` + also,
		},
	}, {
		name: "twice in one file and once in another",
		files: map[string]string{
			"pipelines/web.yaml":  pipelineYAML("web", "web-dev"),
			"pipelines/both.yaml": pipelineYAML("web", "one") + "---\n" + pipelineYAML("web", "two"),
		},
		errs: []string{
			`pipelines/both.yaml:4:9: duplicate pipeline name "web": also declared in pipelines/web.yaml; ` + also,
			`pipelines/both.yaml:14:9: duplicate pipeline name "web"`,
			`pipelines/web.yaml:4:9: duplicate pipeline name "web": also declared in pipelines/both.yaml; ` + also,
		},
	}, {
		name: "one file left",
		files: map[string]string{
			"pipelines/web.yaml":      pipelineYAML("web", "web-dev"),
			"pipelines/unrelated.yml": pipelineYAML("other", "other-dev"),
		},
		loaded: []string{"other", "web"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			tt.files["app/deployment.yaml"] = string(deployment)
			for name, data := range tt.files {
				require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(root, name)), 0o700))
				require.NoError(t, os.WriteFile(filepath.Join(root, name), []byte(data), 0o600))
			}
			pipelines, err := Load(NewRepo(os.DirFS(root)), testClusters)
			var names []string
			for _, p := range pipelines {
				names = append(names, p.Metadata.Name)
			}
			assert.Equal(t, tt.loaded, names)
			if tt.errs == nil {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Equal(t, tt.errs, strings.Split(err.Error(), "\n"))
		})
	}
}

// TestLoadRemoteBases checks that remote bases and bases outside the repository are refused
// at their line in the kustomization, and that remote ones pass when the daemon allows them.
func TestLoadRemoteBases(t *testing.T) {
	repo := NewRepo(os.DirFS("testdata/repos/remote-base"))
	_, err := Load(repo, testClusters)
	require.Error(t, err)
	assert.Equal(t, []string{
		`app/kustomization.yaml:5:3: remote base "github.com/example/platform//base?ref=v1.2.0" is not allowed: the daemon config does not set allowRemoteBases`,
		`app/kustomization.yaml:6:3: remote base "https://raw.githubusercontent.com/example/platform/main/service.yaml" is not allowed: the daemon config does not set allowRemoteBases`,
		`app/kustomization.yaml:7:3: resource "../../outside" leaves the repository`,
	}, strings.Split(err.Error(), "\n"))

	allow := testClusters
	allow.AllowRemoteBases = true
	_, err = Load(repo, allow)
	require.Error(t, err)
	assert.Equal(t, `app/kustomization.yaml:7:3: resource "../../outside" leaves the repository`, err.Error())
}

// TestLoadSymlinks checks that a manifests path or a base reached through a symlink leading
// out of the repository is refused, that a symlink inside it is followed, and that what lies
// outside is invisible to kustomize.
func TestLoadSymlinks(t *testing.T) {
	outside := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(outside, "deployment.yaml"), []byte("kind: Deployment\n"), 0o600))
	root := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(root, name)), 0o700))
		require.NoError(t, os.WriteFile(filepath.Join(root, name), []byte(data), 0o600))
	}
	deployment, err := os.ReadFile("testdata/repos/mixed/app/deployment.yaml")
	require.NoError(t, err)
	write("real/app/deployment.yaml", string(deployment))
	write("real/app/kustomization.yaml", "resources: [deployment.yaml]\n")
	write("base-out/kustomization.yaml", "resources: [../escape]\n")
	require.NoError(t, os.Symlink(outside, filepath.Join(root, "escape")))
	require.NoError(t, os.Symlink("real/app", filepath.Join(root, "inside")))
	require.NoError(t, os.Symlink("../../..", filepath.Join(root, "real", "up")))
	write("pipelines/p.yaml", `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: p}
spec:
  service: web
  stages:
  - {name: a, cluster: dev, namespace: a, manifests: escape}
  - {name: b, cluster: dev, namespace: b, manifests: real/up/etc}
  - {name: c, cluster: dev, namespace: c, manifests: base-out}
`)
	_, err = Load(NewRepo(os.DirFS(root)), testClusters)
	require.Error(t, err)
	lines := strings.Split(err.Error(), "\n")
	require.Len(t, lines, 3, err.Error())
	assert.Regexp(t, `^base-out/kustomization.yaml:1:13: resource "../escape": escape: symlink escape points to /.*, which leads outside the repository$`, lines[0])
	assert.Regexp(t, `^pipelines/p.yaml:7:54: manifests path "escape": escape: symlink escape points to /.*, which leads outside the repository$`, lines[1])
	assert.Equal(t, `pipelines/p.yaml:8:54: manifests path "real/up/etc": real/up/etc leads outside the repository`, lines[2])

	write("pipelines/p.yaml", `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: p}
spec:
  service: web
  stages:
  - {name: a, cluster: dev, namespace: a, manifests: inside}
`)
	repo := NewRepo(os.DirFS(root))
	pipelines, err := Load(repo, testClusters)
	require.NoError(t, err)
	rel, err := NewRenderer(testClusters).Render(repo, pipelines[0], "a")
	require.NoError(t, err)
	assert.Equal(t, "web", rel.Deployment)

	mem, err := repo.memFS()
	require.NoError(t, err)
	assert.False(t, mem.Exists(repoRoot+"/escape"), "a symlink out of the repository is not copied")
	assert.False(t, mem.Exists(repoRoot+"/escape/deployment.yaml"))
	assert.True(t, mem.Exists(repoRoot+"/inside/deployment.yaml"), "a symlink inside is copied as its target")
}
