package charttest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/dynamic"

	"ebb.dev/ebb/internal/daemontest"
	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

var (
	// dev is the home cluster, where the chart is installed, and a target; prod is a target.
	dev, prod *testcluster.Cluster
	// ebbBin is the daemon binary built from ./cmd/ebb.
	ebbBin string
	// helmBin and kubectlBin are the real binaries from the test binary directory.
	helmBin, kubectlBin string
	// chartDir is charts/ebb.
	chartDir string
	// helmEnv keeps helm's cache, config and data in a temporary directory.
	helmEnv []string
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	root, err := testcluster.ModuleRoot()
	if err != nil {
		return fail(err)
	}
	chartDir = filepath.Join(root, "charts", "ebb")
	if helmBin, err = testcluster.Bin("helm"); err != nil {
		return fail(err)
	}
	if kubectlBin, err = testcluster.Bin("kubectl"); err != nil {
		return fail(err)
	}
	tmp, err := os.MkdirTemp("", "ebb-charttest-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)
	for _, v := range []string{"HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"} {
		helmEnv = append(helmEnv, v+"="+filepath.Join(tmp, strings.ToLower(v)))
	}
	ebbBin = filepath.Join(tmp, "ebb")
	if err := daemontest.Build(root, ebbBin); err != nil {
		return fail(err)
	}
	ctx := context.Background()
	if dev, err = testcluster.Start(ctx, testcluster.Options{Name: "dev"}); err != nil {
		return fail(err)
	}
	defer dev.Stop()
	// The CRDs, as kubectl apply -f charts/ebb/crds/ puts them: the releases tests install in
	// dev find them there (crds.install=false); prod gets the chart's own.
	if err := reconciler.InstallCRDs(ctx, dynamic.NewForConfigOrDie(dev.Config), filepath.Join(chartDir, "crds")); err != nil {
		return fail(err)
	}
	if prod, err = testcluster.Start(ctx, testcluster.Options{Name: "prod"}); err != nil {
		return fail(err)
	}
	defer prod.Stop()
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "dev cluster logs:\n%s\n", dev.LogTail(10))
	}
	return code
}

func fail(err error) int {
	fmt.Fprintln(os.Stderr, err)
	return 1
}

// helm runs helm with args and returns its standard output, followed by its standard error
// when it fails. (Run from the source tree, helm logs to standard error that it follows the
// link files/crds; a packaged chart has no link.)
func helm(args ...string) (string, error) {
	cmd := exec.Command(helmBin, args...)
	cmd.Env = append(os.Environ(), helmEnv...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), err
	}
	return string(out), nil
}

// kubectl runs kubectl against the cluster of kubeconfig, with stdin when not empty.
func kubectl(kubeconfig, stdin string, args ...string) (string, error) {
	cmd := exec.Command(kubectlBin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}
