package gitserver

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// SyntheticPipeline returns the content of pipeline file i at revision rev, as written by
// ImportSyntheticHistory.
func SyntheticPipeline(i, rev int) string {
	return fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata:
  name: p-%04d
spec:
  enabled: true
  input:
    image: registry.example.com/team/p-%04d
    tag: "1.0.%d"
  manifests: apps/p-%04d
  stages:
  - name: dev
    cluster: dev
    namespace: p-%04d-dev
    model: rolling
`, i, i, rev, i, i)
}

// SyntheticPath returns the path of pipeline file i in the synthetic history.
func SyntheticPath(i int) string { return fmt.Sprintf("pipelines/p-%04d.yaml", i) }

// ImportSyntheticHistory writes a history of commits commits onto branch main of the bare (or
// non-bare) repository gitDir with `git fast-import`, in seconds even for thousands of
// commits: the first commit adds files pipeline files, each later one bumps one file's tag.
// It is for benchmarks that need a realistically large repository.
func ImportSyntheticHistory(gitDir string, commits, files int) error {
	if commits < 1 || files < 1 {
		return fmt.Errorf("synthetic history needs at least one commit and one file")
	}
	cmd := exec.Command("git", "fast-import", "--quiet", "--force")
	cmd.Dir = gitDir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1", "GIT_DIR="+gitDir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start git fast-import in %s: %w", gitDir, err)
	}
	werr := writeSyntheticStream(stdin, commits, files)
	cerr := stdin.Close()
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("git fast-import in %s: %w: %s", gitDir, err, strings.TrimSpace(stderr.String()))
	}
	if werr != nil {
		return fmt.Errorf("write fast-import stream: %w", werr)
	}
	return cerr
}

func writeSyntheticStream(out io.Writer, commits, files int) error {
	w := bufio.NewWriterSize(out, 1<<16)
	const when = 1700000000
	data := func(s string) { fmt.Fprintf(w, "data %d\n%s\n", len(s), s) }
	for c := 0; c < commits; c++ {
		fmt.Fprintf(w, "commit refs/heads/main\nmark :%d\n", c+1)
		fmt.Fprintf(w, "author ebb test <test@ebb.dev> %d +0000\n", when+c)
		fmt.Fprintf(w, "committer ebb test <test@ebb.dev> %d +0000\n", when+c)
		if c == 0 {
			data("Add pipelines\n")
			for i := 0; i < files; i++ {
				fmt.Fprintf(w, "M 100644 inline %s\n", SyntheticPath(i))
				data(SyntheticPipeline(i, 0))
			}
		} else {
			i := c % files
			data(fmt.Sprintf("Bump p-%04d to 1.0.%d\n", i, c))
			fmt.Fprintf(w, "from :%d\n", c)
			fmt.Fprintf(w, "M 100644 inline %s\n", SyntheticPath(i))
			data(SyntheticPipeline(i, c))
		}
		fmt.Fprintln(w)
	}
	return w.Flush()
}
