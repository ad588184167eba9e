// Package realapps runs the real ebb daemon against applications nobody on this project wrote:
// Argo CD's guestbook, kustomize-guestbook and sock-shop, and podinfo, from planner/testdata,
// each copied as written into a real Git repository with the pipeline `ebb new` would write
// for it, deployed to real local clusters ("dev", which also holds the records, and "prod").
//
// The tests hold ebb to its promise on them: a stage at rest is left alone (no drift reported,
// nothing written), a dropped object is pruned whatever its kind, a failed release returns the
// stage to exactly its last known-good state, a release that is wrong stalls once, and a
// cluster that cannot answer is waited for in the same execution, never rolled back for.
package realapps

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/dynamic"

	"ebb.dev/ebb/internal/daemontest"
	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

var (
	// dev is the dev stages' cluster and the daemons' home: records, events and Leases.
	dev *testcluster.Cluster
	// prod is the prod stages' cluster.
	prod *testcluster.Cluster
	// ebbBin is the daemon binary built from this module.
	ebbBin string
	// testdata is planner/testdata, where the applications are kept.
	testdata string
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	ctx := context.Background()
	root, err := testcluster.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	testdata = filepath.Join(root, "planner", "testdata")
	bin, err := os.MkdirTemp("", "ebb-realapps-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(bin)
	ebbBin = filepath.Join(bin, "ebb")
	if err := daemontest.Build(root, ebbBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if dev, err = testcluster.Start(ctx, testcluster.Options{Name: "dev"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer dev.Stop()
	if prod, err = testcluster.Start(ctx, testcluster.Options{Name: "prod"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer prod.Stop()
	if err := reconciler.InstallCRDs(ctx, dynamic.NewForConfigOrDie(dev.Config), filepath.Join(root, "charts", "ebb", "crds")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "dev cluster logs:\n%s\nprod cluster logs:\n%s\n", dev.LogTail(10), prod.LogTail(10))
	}
	return code
}
