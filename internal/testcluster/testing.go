package testcluster

import (
	"context"
	"fmt"
	"os"
	"testing"
)

// StartT starts a cluster for one test and stops it when the test ends, whether the test
// passes, fails or panics. On failure it prints the tail of each component's log.
func StartT(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cluster %q logs:\n%s", c.Name, c.LogTail(20))
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stop cluster %q: %v", c.Name, err)
		}
	})
	return c
}

// Main starts one cluster for a whole test package, runs its tests, stops the cluster and
// returns the exit code for os.Exit. Use it from TestMain:
//
//	var cluster *testcluster.Cluster
//
//	func TestMain(m *testing.M) { os.Exit(testcluster.Main(m, testcluster.Options{}, &cluster)) }
//
// Should a test panic, the test binary dies and the parent-death signal ends every process.
func Main(m *testing.M, opts Options, into **Cluster) int {
	c, err := Start(context.Background(), opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*into = c
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "cluster %q logs:\n%s", c.Name, c.LogTail(20))
	}
	if err := c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop cluster %q: %v\n", c.Name, err)
		return 1
	}
	return code
}
