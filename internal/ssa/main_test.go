package ssa_test

import (
	"os"
	"testing"

	"ebb.dev/ebb/internal/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(testcluster.Main(m, testcluster.Options{Name: "ssa"}, &cluster))
}
