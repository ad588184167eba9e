package dashboard

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

// cluster is the real control plane the records live in, one per test binary.
var (
	cluster    *testcluster.Cluster
	moduleRoot string

	installOnce sync.Once
	installErr  error
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	var err error
	if moduleRoot, err = testcluster.ModuleRoot(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return testcluster.Main(m, testcluster.Options{Name: "dashboard"}, &cluster)
}

// installed makes sure the CRDs and the approval policy of charts/ebb are in the cluster.
func installed(t testing.TB) {
	t.Helper()
	installOnce.Do(func() {
		ctx := context.Background()
		installErr = reconciler.InstallCRDs(ctx, dynamic.NewForConfigOrDie(cluster.Config), filepath.Join(moduleRoot, "charts", "ebb", "crds"))
		if installErr != nil {
			return
		}
		kubectl, err := testcluster.Bin("kubectl")
		if err != nil {
			installErr = err
			return
		}
		policy := filepath.Join(moduleRoot, "charts", "ebb", "files", "approval-policy.yaml")
		if out, err := exec.Command(kubectl, "--kubeconfig", cluster.Kubeconfig, "apply", "-f", policy).CombinedOutput(); err != nil {
			installErr = fmt.Errorf("apply %s: %v\n%s", policy, err, out)
		}
	})
	require.NoError(t, installErr)
}

// namespace creates a records namespace for one test.
func namespace(t testing.TB) string {
	t.Helper()
	installed(t)
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	ns, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-dash-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}) })
	return ns.Name
}

// serve starts a dashboard over ns as the user of cfg and returns its URL.
func serve(t testing.TB, cfg *rest.Config, ns string, readOnly bool) string {
	t.Helper()
	s, err := New(Options{Client: dynamic.NewForConfigOrDie(cfg), Kube: kubernetes.NewForConfigOrDie(cfg), Namespace: ns, ReadOnly: readOnly})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	require.NoError(t, s.Start(ctx))
	srv := httptest.NewServer(s)
	t.Cleanup(func() {
		cancel() // ends the event streams
		srv.Close()
	})
	return srv.URL
}

// grant gives users a role in ns with rules.
func grant(t testing.TB, ns, role string, rules []rbacv1.PolicyRule, users ...string) {
	t.Helper()
	ctx := context.Background()
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	_, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: role}, Rules: rules}, metav1.CreateOptions{})
	require.NoError(t, err)
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: role}, RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role}}
	for _, u := range users {
		binding.Subjects = append(binding.Subjects, rbacv1.Subject{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: u})
	}
	_, err = cs.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{})
	require.NoError(t, err)
}

// readRecords is what a person who watches releases may do: read every ebb record.
var readRecords = []rbacv1.PolicyRule{{APIGroups: []string{reconciler.Group}, Resources: []string{"executions", "stageledgers", "pipelines", "approvals"}, Verbs: []string{"get", "list", "watch"}}}

// decideApprovals adds the right to update approvals; the admission policy says who may decide.
var decideApprovals = append([]rbacv1.PolicyRule{{APIGroups: []string{reconciler.Group}, Resources: []string{"approvals"}, Verbs: []string{"update"}}}, readRecords...)

// user returns the rest config of a client-certificate user in groups.
func user(t testing.TB, name string, groups ...string) *rest.Config {
	t.Helper()
	cfg, err := cluster.UserConfig(name, groups...)
	require.NoError(t, err)
	return cfg
}

func at(base time.Time, d time.Duration) *metav1.Time {
	t := metav1.NewTime(base.Add(d))
	return &t
}

func dynamicFor(cfg *rest.Config) dynamic.Interface { return dynamic.NewForConfigOrDie(cfg) }

// waitForPolicy waits until the API server enforces the approval policy, which it compiles
// asynchronously: until then an approval created with a decision is accepted (and removed).
func waitForPolicy(t testing.TB, ns string) {
	t.Helper()
	ctx := context.Background()
	store := reconciler.NewStore(dynamicFor(cluster.Config), ns)
	deadline := time.Now().Add(30 * time.Second)
	for {
		a := &reconciler.Approval{Spec: reconciler.ApprovalSpec{Execution: "probe-1", Pipeline: "probe", Stage: "prod", Approvers: []string{"alice"},
			ExpiresAt: metav1.NewTime(time.Now().Add(time.Hour).Truncate(time.Second)),
			Decision:  &reconciler.Decision{Approved: true, By: "alice", At: metav1.Now()}}}
		_, err := store.CreateApproval(ctx, a)
		if err != nil && strings.Contains(err.Error(), "must not carry a decision") {
			return
		}
		require.NoError(t, err, "create the policy probe")
		require.NoError(t, dynamicFor(cluster.Config).Resource(reconciler.ApprovalResource).Namespace(ns).Delete(ctx, reconciler.ApprovalName("probe-1", "prod"), metav1.DeleteOptions{}))
		require.True(t, time.Now().Before(deadline), "the approval policy was not enforced within 30s")
		time.Sleep(100 * time.Millisecond)
	}
}
