package planner

import (
	"flag"
	"os"
	"testing"

	"ebb.dev/ebb/internal/testcluster"
)

// cluster is the real control plane the diff tests plan against, one per test binary.
var cluster *testcluster.Cluster

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		// A fuzzing worker runs only the fuzz target, which needs no cluster; the
		// coordinator process has started one already.
		os.Exit(m.Run())
	}
	os.Exit(testcluster.Main(m, testcluster.Options{Name: "planner"}, &cluster))
}
