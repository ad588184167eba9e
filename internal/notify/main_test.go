package notify_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/daemontest"
	"ebb.dev/ebb/internal/gitserver"
	"ebb.dev/ebb/internal/notify"
	"ebb.dev/ebb/internal/proc"
	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

var (
	home   *testcluster.Cluster
	ebbBin string
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	ctx := context.Background()
	root, err := testcluster.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bin, err := os.MkdirTemp("", "ebb-notify-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(bin)
	ebbBin = filepath.Join(bin, "ebb")
	if err := daemontest.Build(root, ebbBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if home, err = testcluster.Start(ctx, testcluster.Options{Name: "notify"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer home.Stop()
	if err := reconciler.InstallCRDs(ctx, dynamic.NewForConfigOrDie(home.Config), filepath.Join(root, "charts", "ebb", "crds")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// env is one pipeline in a local repository, with its own records namespace.
type env struct {
	t       *testing.T
	name    string
	dir     string
	repo    *gitserver.WorkTree
	records string
	store   *reconciler.Store
	cs      kubernetes.Interface
}

func newEnv(t *testing.T, name string) *env {
	t.Helper()
	e := &env{t: t, name: name, dir: t.TempDir(), cs: kubernetes.NewForConfigOrDie(home.Config)}
	ns, err := e.cs.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-" + name + "-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	e.records = ns.Name
	e.store = reconciler.NewStore(dynamic.NewForConfigOrDie(home.Config), e.records)
	e.repo, err = gitserver.Init(filepath.Join(e.dir, "repo"))
	require.NoError(t, err)
	return e
}

// secret stores a Secret in the records namespace.
func (e *env) secret(name string, data map[string]string) {
	e.t.Helper()
	_, err := e.cs.CoreV1().Secrets(e.records).Create(context.Background(),
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, StringData: data}, metav1.CreateOptions{})
	require.NoError(e.t, err)
}

// release commits the pipeline with image tag.
func (e *env) release(tag string) string {
	e.t.Helper()
	files := map[string]string{"pipelines/" + e.name + ".yaml": fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
kind: Pipeline
metadata:
  name: %[1]s
spec:
  enabled: true
  input:
    image: registry.example/%[1]s
    tag: %[2]q
  manifests: apps/%[1]s
  service: web
  stages:
  - name: dev
    cluster: dev
    namespace: %[1]s-dev
    verify:
      rollout: {timeout: 1m}
    rollback: true
`, e.name, tag)}
	for p, c := range daemontest.AppFiles(e.name, 2) {
		files[p] = c
	}
	sha, err := e.repo.CommitFiles("release "+tag, files)
	require.NoError(e.t, err)
	return sha
}

// daemon is one `ebb run` process, serving its metrics on port.
type daemon struct {
	*daemontest.Daemon
	port int
}

// metric returns the value of one series of the daemon's metrics, such as
// `ebb_notifications_total{receiver="team",result="delivered"}`; 0 when absent.
func (d *daemon) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", d.port))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return f
		}
	}
	return 0
}

// startDaemon runs `ebb run` with a config that holds notifications (YAML list items).
func (e *env) startDaemon(notifications string) *daemon {
	e.t.Helper()
	config := filepath.Join(e.dir, "ebb-config.yaml")
	require.NoError(e.t, os.WriteFile(config, []byte(fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
kind: Config
clusters:
- name: dev
  kubeconfig: %s
notifications:
%s`, home.Kubeconfig, notifications)), 0o600))
	port, err := proc.FreePort()
	require.NoError(e.t, err)
	return &daemon{port: port, Daemon: daemontest.Start(e.t, ebbBin, nil, "run",
		"--repo", "file://"+e.repo.Dir, "--branch", "main", "--config", config,
		"--kubeconfig", home.Kubeconfig, "--namespace", e.records,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--interval", "1s", "--resync", "2s", "--log-level", "debug",
		"--cache-dir", filepath.Join(e.dir, "cache"))}
}

// delivery is one request a receiver got.
type delivery struct {
	Payload   notify.Payload
	Body      []byte
	Signature string
	ID        string
	// Slack is the body as a Slack message.
	Slack struct {
		Text string `json:"text"`
	}
}

// receiver is a real HTTP server that records what it is sent; while down, it answers 503.
type receiver struct {
	*httptest.Server
	mu      sync.Mutex
	down    bool
	got     []delivery
	refused int
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.down {
			r.refused++
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		d := delivery{Body: body, Signature: req.Header.Get(notify.HeaderSignature), ID: req.Header.Get(notify.HeaderDelivery)}
		if err := json.Unmarshal(body, &d.Payload); err != nil || json.Unmarshal(body, &d.Slack) != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.got = append(r.got, d)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) setDown(down bool) {
	r.mu.Lock()
	r.down = down
	r.mu.Unlock()
}

// deliveries returns what the receiver got for one execution, in arrival order.
func (r *receiver) deliveries(execution string) []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []delivery
	for _, d := range r.got {
		if execution == "" || d.Payload.Execution == execution {
			out = append(out, d)
		}
	}
	return out
}

func (r *receiver) refusals() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refused
}
