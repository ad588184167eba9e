package testcluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/api/resource"
)

// BinDir returns the directory that holds the test binaries: $EBB_TESTBIN when set, otherwise
// .cache/testbin at the top of the ebb module that contains the working directory, which is
// where `make testbin` puts them.
func BinDir() (string, error) {
	if dir := os.Getenv("EBB_TESTBIN"); dir != "" {
		return filepath.Abs(dir)
	}
	top, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(top, ".cache", "testbin"), nil
}

// Bin returns the path of one test binary (e.g. "kubectl", "helm"), or an error naming the
// make target that builds it.
func Bin(name string) (string, error) {
	dir, err := BinDir()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%s is missing from %s; run `make testbin`", name, dir)
	}
	return path, nil
}

// ModuleRoot walks up from the working directory to the directory whose go.mod declares
// module ebb.dev/ebb.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module ebb.dev/ebb\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the ebb module; set EBB_TESTBIN to the test binaries' directory")
		}
		dir = parent
	}
}

func mustQuantity(s string) resource.Quantity { return resource.MustParse(s) }
