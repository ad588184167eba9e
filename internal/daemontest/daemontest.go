// Package daemontest runs the real ebb daemon binary for end-to-end tests: it builds the
// binary, starts `ebb run` in its own process group, keeps its JSON log lines for the test to
// read, and waits for executions to reach a status.
package daemontest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"ebb.dev/ebb/reconciler"
)

// BuildTags are the build tags of every ebb binary, as the Makefile and the Dockerfile build it:
// kustomize's Go plugin loader imports package plugin, and a binary that links plugin keeps
// every method and exports every symbol, about 27 MiB more resident memory for a loader ebb
// never calls (kustomize's default options disable plugins).
const BuildTags = "kustomize_disable_go_plugin_support"

// Build compiles ./cmd/ebb of the module at root into out, with BuildTags.
func Build(root, out string) error {
	cmd := exec.Command("go", "build", "-tags", BuildTags, "-o", out, "./cmd/ebb")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build ebb: %v\n%s", err, b)
	}
	return nil
}

// Daemon is one `ebb run` process. Its standard error, the JSON log, is kept line by line.
type Daemon struct {
	t    testing.TB
	cmd  *exec.Cmd
	done chan struct{}

	mu   sync.Mutex
	raw  []string
	logs []map[string]any
}

// Start runs bin with args and the extra environment env. The test's cleanup kills it and,
// when the test failed, prints the end of its log.
func Start(t testing.TB, bin string, env []string, args ...string) *Daemon {
	t.Helper()
	d := &Daemon{t: t, done: make(chan struct{})}
	d.cmd = exec.Command(bin, args...)
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go d.read(stderr)
	t.Cleanup(func() {
		d.Kill()
		if t.Failed() {
			d.mu.Lock()
			from := max(0, len(d.raw)-80)
			t.Logf("daemon log (last %d lines):\n%s", len(d.raw)-from, strings.Join(d.raw[from:], "\n"))
			d.mu.Unlock()
		}
	})
	return d
}

func (d *Daemon) read(r io.Reader) {
	defer close(d.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var m map[string]any
		_ = json.Unmarshal([]byte(line), &m)
		d.mu.Lock()
		d.raw = append(d.raw, line)
		if m != nil {
			d.logs = append(d.logs, m)
		}
		d.mu.Unlock()
	}
}

// Pid is the daemon's process id.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Lines returns the log lines that contain s, case-insensitively; every line for "".
func (d *Daemon) Lines(s string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, l := range d.raw {
		if strings.Contains(strings.ToLower(l), strings.ToLower(s)) {
			out = append(out, l)
		}
	}
	return out
}

// WaitLog waits for a log line with every given key=value, and returns it.
func (d *Daemon) WaitLog(timeout time.Duration, kv ...string) map[string]any {
	d.t.Helper()
	var found map[string]any
	if !assert.Eventually(d.t, func() bool {
		found = d.FindLog(kv...)
		return found != nil
	}, timeout, 5*time.Millisecond) {
		d.t.Fatalf("no daemon log line with %v", kv)
	}
	return found
}

// FindLog returns the first log line with every given key=value, or nil.
func (d *Daemon) FindLog(kv ...string) map[string]any {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.logs {
		if matches(m, kv) {
			return m
		}
	}
	return nil
}

// CountLogs counts the log lines with every given key=value.
func (d *Daemon) CountLogs(kv ...string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, m := range d.logs {
		if matches(m, kv) {
			n++
		}
	}
	return n
}

func matches(m map[string]any, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		if fmt.Sprint(m[kv[i]]) != kv[i+1] {
			return false
		}
	}
	return true
}

// Kill kills the daemon with SIGKILL, as a crash or an OOM kill would, and waits for it.
func (d *Daemon) Kill() {
	if d.cmd.ProcessState != nil {
		return
	}
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	<-d.done
	_ = d.cmd.Wait()
}

// Terminate sends SIGTERM, as Kubernetes does, and waits up to 20s for the daemon to exit.
func (d *Daemon) Terminate() error {
	_ = syscall.Kill(d.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		return fmt.Errorf("daemon did not exit within 20s of SIGTERM")
	}
	return d.cmd.Wait()
}

// WaitExecution waits for the Deploy execution of pipeline at commit to reach status. On
// failure it names every execution of the pipeline.
func WaitExecution(t testing.TB, store *reconciler.Store, pipeline, commit string, status reconciler.Status) *reconciler.Execution {
	t.Helper()
	var last *reconciler.Execution
	var seen []string
	ok := assert.Eventually(t, func() bool {
		list, err := store.ListExecutions(context.Background(), pipeline)
		if err != nil {
			seen = []string{err.Error()}
			return false
		}
		seen = seen[:0]
		for i := range list {
			seen = append(seen, Describe(&list[i])+" commit="+list[i].Spec.ShortCommit)
			if list[i].Spec.Kind == reconciler.KindDeploy && list[i].Spec.Commit == commit {
				last = &list[i]
				if list[i].Status.Phase == status {
					return true
				}
			}
		}
		return false
	}, 90*time.Second, 20*time.Millisecond)
	if !ok {
		t.Fatalf("execution of %s at %s never reached %s; last: %s; executions: %s", pipeline, commit[:7], status, Describe(last), strings.Join(seen, "; "))
	}
	return last
}

// Describe is an execution in one line, for messages.
func Describe(x *reconciler.Execution) string {
	if x == nil {
		return "none"
	}
	return fmt.Sprintf("%s %s stage=%s comment=%q", x.Spec.DisplayName, x.Status.Phase, x.Status.Stage, x.Status.Comment)
}

// AppFiles returns the manifests of a small web app under apps/<name>/ in a repository: a
// kustomization with a Namespace, a Service and a Deployment of replicas pods of image
// registry.example/<name>, with Kubernetes' default progress deadline (600s): a release whose
// pods cannot run fails by fail-fast, as users' releases do. extra names more
// resource files of the kustomization, which the caller adds.
func AppFiles(name string, replicas int, extra ...string) map[string]string {
	dir := "apps/" + name + "/"
	resources := append([]string{"namespace.yaml", "service.yaml", "deployment.yaml"}, extra...)
	return map[string]string{
		dir + "kustomization.yaml": "resources: [" + strings.Join(resources, ", ") + "]\n",
		dir + "namespace.yaml":     "apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n",
		dir + "service.yaml": `apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
`,
		dir + "deployment.yaml": fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: %d
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: registry.example/%s:0.0.0
        ports: [{containerPort: 8080}]
`, replicas, name),
	}
}
