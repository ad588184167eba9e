package ssa_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"ebb.dev/ebb/internal/ssa"
	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/planner"
)

// sockShop renders Argo CD's sock-shop example as written (14 Deployments, their Services and
// an Ingress: 30 objects) into namespace ns.
func sockShop(b testing.TB, ns string) []*unstructured.Unstructured {
	b.Helper()
	root, err := testcluster.ModuleRoot()
	require.NoError(b, err)
	repo := planner.NewRepo(os.DirFS(filepath.Join(root, "planner", "testdata", "argocd-example-apps")))
	opts := planner.Options{Clusters: []string{"dev", "prod"}}
	pipelines, err := planner.Load(repo, opts)
	require.NoError(b, err)
	for _, p := range pipelines {
		if p.Metadata.Name != "sock-shop" {
			continue
		}
		p.Spec.Stages[0].Namespace = ns
		rel, err := planner.NewRenderer(opts).Render(repo, p, "dev")
		require.NoError(b, err)
		return rel.Objects.Decode()
	}
	b.Fatal("no sock-shop pipeline")
	return nil
}

// BenchmarkApplySockShop applies the 30 objects of sock-shop, once to create them and then
// again unchanged (what a release that changes one image costs besides that image): wall time
// and API requests per apply.
func BenchmarkApplySockShop(b *testing.B) {
	ctx := context.Background()
	for _, phase := range []string{"create", "unchanged"} {
		b.Run(phase, func(b *testing.B) {
			m, requests := newManager(b)
			var total int64
			for b.Loop() {
				b.StopTimer()
				ns := namespace(b)
				objs := sockShop(b, ns)
				if phase == "unchanged" {
					_, err := m.Apply(ctx, objs, ssa.ApplyOptions{Owner: owner})
					require.NoError(b, err)
				}
				before := requests.n.Load()
				b.StartTimer()
				applied, err := m.Apply(ctx, objs, ssa.ApplyOptions{Owner: owner})
				b.StopTimer()
				require.NoError(b, err)
				require.Len(b, applied, len(objs))
				total += requests.n.Load() - before
				b.StartTimer()
			}
			b.ReportMetric(float64(total)/float64(b.N), "requests/apply")
		})
	}
}
