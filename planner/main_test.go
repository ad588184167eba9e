package planner

import (
	"os"
	"testing"

	"ebb.dev/ebb/internal/testcluster"
)

// cluster is the real control plane the diff tests plan against, one per test binary.
var cluster *testcluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(testcluster.Main(m, testcluster.Options{Name: "planner"}, &cluster))
}
