package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/internal/testprom"
	"ebb.dev/ebb/reconciler"
)

// TestBlueGreenExampleWithGates deploys examples/blue-green as written, but for the
// addresses only a real cluster has: dev's health check points at a test server, prod's
// Prometheus at a real one scraping an exporter whose error rate depends on the image prod
// runs. Prod waits for an approval that a release manager gives with `ebb approve`; a later
// release passes its approval but fails the error-rate threshold after the switch, and is
// switched back to blue.
func TestBlueGreenExampleWithGates(t *testing.T) {
	e := newEnv(t, "blue-green-example", envOptions{}) // the example pipeline's name
	ctx := context.Background()

	var mu sync.Mutex
	checked := map[string]int{}
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		checked[r.URL.Path]++
		mu.Unlock()
		_, _ = w.Write([]byte("ok"))
	}))
	defer health.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ebb_e2e_error_ratio", Help: "5xx ratio of shop in prod."}, func() float64 {
		pods, err := e.prodCS.CoreV1().Pods("shop").List(ctx, metav1.ListOptions{})
		if err != nil {
			return 1
		}
		for _, p := range pods.Items {
			if strings.Contains(p.Spec.Containers[0].Image, "leaky") && p.DeletionTimestamp == nil {
				return 0.3
			}
		}
		return 0.01
	}))
	exporter := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer exporter.Close()
	prom := testprom.StartT(t, testprom.Options{Targets: []string{strings.TrimPrefix(exporter.URL, "http://")}, ScrapeInterval: 200 * time.Millisecond})
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, prom.WaitForSamples(waitCtx, "ebb_e2e_error_ratio", 1))

	// The example, with this machine's addresses and short waits.
	require.NoError(t, os.CopyFS(e.repo.Dir, os.DirFS(filepath.Join(moduleRoot, "examples", "blue-green"))))
	pipeline := filepath.Join(e.repo.Dir, "pipelines", "shop.yaml")
	edit(t, pipeline,
		"http://{service}.shop-dev.svc/healthz", health.URL+"/health/{service}",
		"interval: 5s, successes: 3", "interval: 50ms, successes: 3",
		"http://prometheus.monitoring.svc:9090", prom.URL,
		`sum(rate(http_requests_total{service="shop",code=~"5.."}[1m])) / sum(rate(http_requests_total{service="shop"}[1m]))`, "max(ebb_e2e_error_ratio)",
		"interval: 15s", "interval: 250ms",
		"for: 2m", "for: 2s",
		"retireAfter: 5m", "retireAfter: 1s",
		"    manifests: apps/shop/overlays/dev\n    model: blue-green\n", "    manifests: apps/shop/overlays/dev\n    model: blue-green\n    blueGreen: {retireAfter: 1s}\n",
	)
	_, err := e.repo.Commit("the blue-green example")
	require.NoError(t, err)
	rita := releaseManager(t, e)
	e.startDaemon()

	first, err := e.repo.Head()
	require.NoError(t, err)
	x := e.waitExecution(first, reconciler.Waiting)
	assert.Equal(t, "prod", x.Status.Stage)
	assert.Contains(t, x.Status.Comment, "waits for approval by group:release-managers")
	mu.Lock()
	assert.Positive(t, checked["/health/shop-preview"], "green is checked through the preview Service")
	assert.Positive(t, checked["/health/shop"], "traffic is checked through the Service")
	mu.Unlock()

	out, err := exec.Command(ebbBin, "approve", x.Spec.DisplayName, "--comment", "ship it", "--kubeconfig", rita, "-n", e.records).CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Contains(t, string(out), "rita")
	e.waitExecution(first, reconciler.Completed)
	blue := serviceRelease(t, e, "shop")
	require.NotEmpty(t, blue)

	leaky := setTag(t, e, pipeline, "2.0.1", "2.1.0-leaky")
	x = e.waitExecution(leaky, reconciler.Waiting)
	out, err = exec.Command(ebbBin, "approve", x.Spec.DisplayName, "--kubeconfig", rita, "-n", e.records).CombinedOutput()
	require.NoError(t, err, string(out))
	x = e.waitExecution(leaky, reconciler.RollbackCompleted)
	assert.Contains(t, x.Status.Comment, `stage prod, task "Verify traffic" failed`)
	assert.Contains(t, x.Status.Comment, "max(ebb_e2e_error_ratio)")
	assert.Equal(t, blue, serviceRelease(t, e, "shop"), "the Service is back on blue")
	e.waitNamed("blue-green-example_prod_rollback#1", reconciler.Completed)
}

// releaseManager makes user rita, in group release-managers, able to read executions and
// decide approvals in the env's records namespace, and returns her kubeconfig.
func releaseManager(t *testing.T, e *env) string {
	t.Helper()
	ctx := context.Background()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "approver", Namespace: e.records},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"ebb.dev"}, Resources: []string{"approvals"}, Verbs: []string{"get", "list", "watch", "update"}},
			{APIGroups: []string{"ebb.dev"}, Resources: []string{"executions"}, Verbs: []string{"get", "list"}},
		},
	}
	_, err := e.devCS.RbacV1().Roles(e.records).Create(ctx, role, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = e.devCS.RbacV1().RoleBindings(e.records).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "release-managers", Namespace: e.records},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "approver"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "release-managers"}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	cfg, err := dev.UserConfig("rita", "release-managers")
	require.NoError(t, err)
	path := filepath.Join(e.dir, "rita.kubeconfig")
	require.NoError(t, testcluster.WriteKubeconfig(path, "dev", cfg))
	return path
}

func serviceRelease(t *testing.T, e *env, name string) string {
	t.Helper()
	svc, err := e.prodCS.CoreV1().Services("shop").Get(context.Background(), name, metav1.GetOptions{})
	require.NoError(t, err)
	return svc.Spec.Selector[reconciler.LabelRelease]
}

// setTag commits the pipeline file with its tag changed, and returns the commit.
func setTag(t *testing.T, e *env, path, from, to string) string {
	t.Helper()
	edit(t, path, fmt.Sprintf("tag: %q", from), fmt.Sprintf("tag: %q", to))
	sha, err := e.repo.Commit("release " + to)
	require.NoError(t, err)
	return sha
}

// edit replaces each old string of path with its new one; every old string must be there.
func edit(t *testing.T, path string, oldNew ...string) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	s := string(data)
	for i := 0; i+1 < len(oldNew); i += 2 {
		require.Contains(t, s, oldNew[i], "%s has no %q", path, oldNew[i])
		s = strings.ReplaceAll(s, oldNew[i], oldNew[i+1])
	}
	require.NoError(t, os.WriteFile(path, []byte(s), 0o644))
}
