package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"ebb.dev/ebb/internal/testcluster"
)

// cluster is the real control plane `ebb plan` runs against, one per test binary.
var cluster *testcluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(testcluster.Main(m, testcluster.Options{Name: "cli"}, &cluster))
}

// ebb runs the command line in-process and returns its exit code, stdout and stderr.
func ebb(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := execute(context.Background(), args, strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}
