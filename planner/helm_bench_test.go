package planner

import (
	"os"
	"testing"
)

// BenchmarkRenderHelmPodinfo measures one render of podinfo's chart (the dev stage: inline
// values and a values file) from a loaded snapshot, with a cold cache: the chart's 30 files
// read and loaded, its templates rendered, the objects namespaced, labelled, injected and
// hashed.
//
// go test ./planner -run '^$' -bench BenchmarkRenderHelmPodinfo -benchmem
func BenchmarkRenderHelmPodinfo(b *testing.B) {
	repo, p := loadOne(b, podinfoChartRepo, "podinfo")
	for b.Loop() {
		if _, err := NewRenderer(testClusters).Render(repo, p, "dev"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRenderKustomizePodinfo is the same application from its kustomize directory, for
// comparison.
func BenchmarkRenderKustomizePodinfo(b *testing.B) {
	dir := b.TempDir()
	writeTree(b, dir, map[string]string{"pipelines/podinfo.yaml": `apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata: {name: podinfo}
spec:
  input: {image: ghcr.io/stefanprodan/podinfo, tag: 6.14.0}
  service: podinfo
  manifests: app
  stages: [{name: dev, cluster: dev, namespace: podinfo-dev}]
`})
	copyDir(b, "testdata/podinfo-kustomize", dir+"/app")
	repo, p := loadOne(b, dir, "podinfo")
	for b.Loop() {
		if _, err := NewRenderer(testClusters).Render(repo, p, "dev"); err != nil {
			b.Fatal(err)
		}
	}
}

func copyDir(b *testing.B, src, dst string) {
	b.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRenderHelmPodinfoUnchanged measures what an unchanged podinfo chart costs a poll:
// the cache replays the render's looks at the repository and reuses the release.
func BenchmarkRenderHelmPodinfoUnchanged(b *testing.B) {
	repo, p := loadOne(b, podinfoChartRepo, "podinfo")
	r := NewRenderer(testClusters)
	if _, err := r.Render(repo, p, "dev"); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := r.Render(repo, p, "dev"); err != nil {
			b.Fatal(err)
		}
	}
	if r.Stats().Rendered != 1 {
		b.Fatalf("rendered %d times", r.Stats().Rendered)
	}
}
