// Command devcluster starts the local "dev" and "prod" clusters in the foreground, writes their
// kubeconfigs, and stops them on Ctrl-C (SIGINT) or SIGTERM. It is `make cluster`: a way for a
// person, or a script, to try ebb by hand against a real control plane.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"ebb.dev/ebb/internal/testcluster"
)

func main() { os.Exit(run()) }

func run() int {
	dir := flag.String("dir", ".cache/cluster", "directory for the clusters' kubeconfigs, data and logs")
	nodes := flag.Int("nodes", 2, "kwok nodes per cluster")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	abs, err := filepath.Abs(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	clusters, err := startAll(ctx, abs, *nodes, "dev", "prod")
	defer func() {
		for _, c := range clusters {
			if err := c.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "stop %s: %v\n", c.Name, err)
			}
		}
	}()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, c := range clusters {
		fmt.Printf("cluster %-4s  export KUBECONFIG=%s\n", c.Name, c.Kubeconfig)
	}
	fmt.Printf("logs in %s/<cluster>/*.log; press Ctrl-C to stop both clusters\n", abs)
	<-ctx.Done()
	fmt.Println("stopping")
	return 0
}

// startAll starts one cluster per name, each in dir/<name>, with its kubeconfig copied to
// dir/<name>.kubeconfig. It returns the clusters it started, also on error, so they can be
// stopped.
func startAll(ctx context.Context, dir string, nodes int, names ...string) ([]*testcluster.Cluster, error) {
	var clusters []*testcluster.Cluster
	for _, name := range names {
		cdir := filepath.Join(dir, name)
		if err := os.RemoveAll(cdir); err != nil {
			return clusters, err
		}
		c, err := testcluster.Start(ctx, testcluster.Options{Name: name, Nodes: nodes, Dir: cdir})
		if err != nil {
			return clusters, err
		}
		clusters = append(clusters, c)
		kubeconfig := filepath.Join(dir, name+".kubeconfig")
		if err := testcluster.WriteKubeconfig(kubeconfig, name, c.Config); err != nil {
			return clusters, err
		}
		c.Kubeconfig = kubeconfig
		if ctx.Err() != nil {
			return clusters, errors.New("interrupted")
		}
	}
	return clusters, nil
}
