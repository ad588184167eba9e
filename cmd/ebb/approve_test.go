package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

// approvalUser is a person with a client certificate, RBAC to read and update approvals in the
// fixture's namespace, and a kubeconfig for the CLI.
type approvalUser struct {
	name       string
	config     *rest.Config
	kubeconfig string
}

// approvalFixture is a namespace of approval records on the test cluster, with the CRDs and
// the admission policy of charts/ebb installed, and three users: alice (an approver by name,
// and in group release-managers), carol (in group release-managers) and mallory (no approver,
// but with the same RBAC as the others).
type approvalFixture struct {
	ns                    string
	admin                 *reconciler.Store
	alice, carol, mallory approvalUser
}

func newApprovalFixture(t *testing.T) *approvalFixture {
	t.Helper()
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(cluster.Config)
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	top, err := testcluster.ModuleRoot()
	require.NoError(t, err)
	require.NoError(t, reconciler.InstallCRDs(ctx, dyn, filepath.Join(top, "charts", "ebb", "crds")))
	applyFile(t, dyn, filepath.Join(top, "charts", "ebb", "files", "approval-policy.yaml"))

	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-approvals-"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}) })
	f := &approvalFixture{ns: ns.Name, admin: reconciler.NewStore(dyn, ns.Name)}
	f.alice = newApprovalUser(t, "alice", "release-managers")
	f.carol = newApprovalUser(t, "carol", "release-managers")
	f.mallory = newApprovalUser(t, "mallory")
	grantApprovalAccess(t, cs, ns.Name, "alice", "carol", "mallory")
	f.waitForPolicy(t)
	return f
}

func newApprovalUser(t *testing.T, name string, groups ...string) approvalUser {
	t.Helper()
	cfg, err := cluster.UserConfig(name, groups...)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), name+".kubeconfig")
	require.NoError(t, testcluster.WriteKubeconfig(path, name, cfg))
	return approvalUser{name: name, config: cfg, kubeconfig: path}
}

// grantApprovalAccess lets users read and update approvals and read executions in ns: what a
// team would grant its release engineers, and exactly what mallory must not be able to abuse.
func grantApprovalAccess(t *testing.T, cs kubernetes.Interface, ns string, users ...string) {
	t.Helper()
	ctx := context.Background()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "ebb-approver"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{reconciler.Group}, Resources: []string{"approvals"}, Verbs: []string{"get", "list", "watch", "update"}},
			{APIGroups: []string{reconciler.Group}, Resources: []string{"executions"}, Verbs: []string{"get", "list"}},
		},
	}
	_, err := cs.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{})
	require.NoError(t, err)
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "ebb-approver"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
	}
	for _, u := range users {
		binding.Subjects = append(binding.Subjects, rbacv1.Subject{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: u})
	}
	_, err = cs.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{})
	require.NoError(t, err)
}

// applyFile server-side applies every object of a multi-document YAML file.
func applyFile(t *testing.T, dyn dynamic.Interface, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discovery.NewDiscoveryClientForConfigOrDie(cluster.Config)))
	for _, doc := range strings.Split(string(data), "\n---\n") {
		obj := &unstructured.Unstructured{}
		require.NoError(t, yaml.Unmarshal([]byte(doc), &obj.Object), path)
		if len(obj.Object) == 0 {
			continue
		}
		gvk := obj.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		require.NoError(t, err, "find the resource of %s", gvk)
		_, err = dyn.Resource(mapping.Resource).Apply(context.Background(), obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "ebb-test", Force: true})
		require.NoError(t, err, "apply %s %s", gvk.Kind, obj.GetName())
	}
}

// waitForPolicy waits until the API server enforces the policy, which it compiles
// asynchronously after it is created: until then an approval created with a decision is
// accepted (and removed again here).
func (f *approvalFixture) waitForPolicy(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		a := f.approval("policy-probe#1", "prod", []string{"alice"}, time.Hour)
		a.Spec.Decision = &reconciler.Decision{Approved: true, By: "alice", At: metav1.Now()}
		_, err := f.admin.CreateApproval(ctx, a)
		if err != nil && strings.Contains(err.Error(), "must not carry a decision") {
			return
		}
		require.NoError(t, err, "create the policy probe")
		require.NoError(t, dynamic.NewForConfigOrDie(cluster.Config).Resource(reconciler.ApprovalResource).Namespace(f.ns).
			Delete(ctx, reconciler.ApprovalName("policy-probe-1", "prod"), metav1.DeleteOptions{}))
		require.True(t, time.Now().Before(deadline), "the approval policy was not enforced within 30s")
		time.Sleep(100 * time.Millisecond)
	}
}

// approval returns an unsaved approval of stage of the execution named display (web#3).
func (f *approvalFixture) approval(display, stage string, approvers []string, expiresIn time.Duration) *reconciler.Approval {
	pipeline, _, _ := reconciler.ParseDisplayName(display)
	return &reconciler.Approval{Spec: reconciler.ApprovalSpec{
		Execution: reconciler.ObjectName(display), DisplayName: display, Pipeline: pipeline, Stage: stage,
		Approvers: approvers, ExpiresAt: metav1.NewTime(time.Now().Add(expiresIn).Truncate(time.Second)),
	}}
}

// create stores an approval as the daemon does.
func (f *approvalFixture) create(t *testing.T, display, stage string, approvers []string, expiresIn time.Duration) *reconciler.Approval {
	t.Helper()
	a, err := f.admin.CreateApproval(context.Background(), f.approval(display, stage, approvers, expiresIn))
	require.NoError(t, err)
	return a
}

// updateAs reads the approval as user, changes it, and writes it back: what kubectl edit or a
// script with the user's credentials can do, with no CLI in the way.
func updateAs(t *testing.T, user approvalUser, ns, name string, change func(*reconciler.Approval)) error {
	t.Helper()
	ctx := context.Background()
	client := dynamic.NewForConfigOrDie(user.config).Resource(reconciler.ApprovalResource).Namespace(ns)
	u, err := client.Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	a := &reconciler.Approval{}
	require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, a))
	change(a)
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(a)
	require.NoError(t, err)
	_, err = client.Update(ctx, &unstructured.Unstructured{Object: m}, metav1.UpdateOptions{})
	return err
}

func decision(approved bool, by string) func(*reconciler.Approval) {
	return func(a *reconciler.Approval) {
		a.Spec.Decision = &reconciler.Decision{Approved: approved, By: by, At: metav1.Now()}
	}
}

// TestApproveCommand runs `ebb approve` and `ebb reject` as different users.
func TestApproveCommand(t *testing.T) {
	f := newApprovalFixture(t)
	approvers := []string{"alice", "group:release-managers"}
	tests := []struct {
		name      string
		user      approvalUser
		args      []string
		approvers []string
		expiresIn time.Duration
		wantCode  int
		wantOut   string
		wantErr   []string
		// want is the decision recorded, nil for none.
		want *reconciler.Decision
	}{
		{name: "an approver approves", user: f.alice, args: []string{"approve", "--comment", "dashboards are green"},
			wantOut: "approved %s stage prod as alice\n", want: &reconciler.Decision{Approved: true, By: "alice", Comment: "dashboards are green"}},
		{name: "a group approver approves", user: f.carol, args: []string{"approve"}, approvers: []string{"group:release-managers"},
			wantOut: "approved %s stage prod as carol\n", want: &reconciler.Decision{Approved: true, By: "carol"}},
		{name: "an approver rejects", user: f.alice, args: []string{"reject", "--comment", "error budget spent"},
			wantOut: "rejected %s stage prod as alice\n", want: &reconciler.Decision{Approved: false, By: "alice", Comment: "error budget spent"}},
		{name: "the API server denies a non-approver", user: f.mallory, args: []string{"approve"}, wantCode: exitError,
			wantErr: []string{"the API server refused to let mallory approve %s stage prod", "denied request: mallory is not an approver of %s stage prod (approvers: alice, group:release-managers)"}},
		{name: "an expired approval is refused", user: f.alice, args: []string{"approve"}, expiresIn: -time.Minute, wantCode: exitError,
			wantErr: []string{"the approval of %s stage prod expired at", "it can no longer be decided"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			display := reconciler.DisplayName("web", i+1)
			if tt.approvers == nil {
				tt.approvers = approvers
			}
			if tt.expiresIn == 0 {
				tt.expiresIn = time.Hour
			}
			a := f.create(t, display, "prod", tt.approvers, tt.expiresIn)

			args := append([]string{tt.args[0], display, "--kubeconfig", tt.user.kubeconfig, "-n", f.ns}, tt.args[1:]...)
			code, stdout, stderr := ebb(t, args...)
			require.Equal(t, tt.wantCode, code, "stdout: %s\nstderr: %s", stdout, stderr)
			if tt.wantOut != "" {
				assert.Equal(t, strings.ReplaceAll(tt.wantOut, "%s", display), stdout)
			}
			if stderr != "" {
				t.Log(stderr)
			}
			for _, w := range tt.wantErr {
				assert.Contains(t, stderr, strings.ReplaceAll(w, "%s", display))
			}

			got, err := f.admin.GetApproval(context.Background(), a.Name)
			require.NoError(t, err)
			if tt.want == nil {
				assert.Nil(t, got.Spec.Decision, "no decision may be recorded")
				return
			}
			require.NotNil(t, got.Spec.Decision)
			assert.Equal(t, tt.want.Approved, got.Spec.Decision.Approved)
			assert.Equal(t, tt.want.By, got.Spec.Decision.By)
			assert.Equal(t, tt.want.Comment, got.Spec.Decision.Comment)
			assert.WithinDuration(t, time.Now(), got.Spec.Decision.At.Time, time.Minute)
		})
	}
}

// TestApproveCommandChoosesStage needs --stage when an execution waits in several stages, and
// tells which approvals were already decided.
func TestApproveCommandChoosesStage(t *testing.T) {
	f := newApprovalFixture(t)
	run := func(args ...string) (int, string, string) {
		return ebb(t, append(args, "--kubeconfig", f.alice.kubeconfig, "-n", f.ns)...)
	}
	f.create(t, "api#1", "dev", []string{"alice"}, time.Hour)
	f.create(t, "api#1", "prod", []string{"alice"}, time.Hour)

	code, _, stderr := run("approve", "api#1")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "api#1 waits for approval in several stages (dev, prod); choose one with --stage")

	code, stdout, stderr := run("approve", "api#1", "--stage", "dev")
	require.Equal(t, exitOK, code, stderr)
	assert.Equal(t, "approved api#1 stage dev as alice\n", stdout)

	code, _, stderr = run("reject", "api#1", "--stage", "dev")
	assert.Equal(t, exitError, code)
	assert.Contains(t, stderr, "the approval of api#1 stage dev was already approved by alice at")

	code, stdout, stderr = run("reject", "api#1")
	require.Equal(t, exitOK, code, stderr)
	assert.Equal(t, "rejected api#1 stage prod as alice\n", stdout)

	code, _, stderr = run("approve", "api#1")
	assert.Equal(t, exitError, code)
	assert.Contains(t, stderr, "api#1 waits for no approval: every approval was decided (dev approved by alice; prod rejected by alice)")

	code, _, stderr = run("approve", "api#1", "--stage", "staging")
	assert.Equal(t, exitError, code)
	assert.Contains(t, stderr, "api#1 has no approval for stage staging (stages: dev, prod)")

	code, _, stderr = run("approve", "api#9")
	assert.Equal(t, exitError, code)
	assert.Contains(t, stderr, "execution api#9 not found in namespace "+f.ns)

	code, _, stderr = run("approve", "api")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "want NAME#N")
}

// TestApprovalPolicy proves the API server, not the CLI, enforces who may decide: each update
// is made with the user's own credentials, straight to the API.
func TestApprovalPolicy(t *testing.T) {
	f := newApprovalFixture(t)
	approvers := []string{"alice", "group:release-managers"}
	tests := []struct {
		name string
		user approvalUser
		// decided is the decision already recorded (by alice), nil for none.
		decided *bool
		change  func(*reconciler.Approval)
		// wantErr is "" when the update is allowed, else part of the policy's message.
		wantErr string
	}{
		{name: "an approver records their own decision", user: f.alice, change: decision(true, "alice")},
		{name: "a group approver records their own decision", user: f.carol, change: decision(false, "carol")},
		{name: "a non-approver with update rights is denied", user: f.mallory, change: decision(true, "mallory"),
			wantErr: "mallory is not an approver of policy#3 stage prod (approvers: alice, group:release-managers)"},
		{name: "nobody decides in someone else's name", user: f.alice, change: decision(true, "bob"),
			wantErr: "alice cannot record a decision by bob"},
		{name: "a non-approver cannot use an approver's name", user: f.mallory, change: decision(true, "alice"),
			wantErr: "mallory cannot record a decision by alice"},
		{name: "a decision cannot be changed", user: f.alice, decided: ptrTo(true), change: decision(false, "alice"),
			wantErr: "approval of policy#6 stage prod was already approved by alice at"},
		{name: "a decision cannot be removed", user: f.alice, decided: ptrTo(false),
			change:  func(a *reconciler.Approval) { a.Spec.Decision = nil },
			wantErr: "was already rejected by alice at"},
		{name: "nobody adds themselves to the approvers", user: f.mallory,
			change: func(a *reconciler.Approval) {
				a.Spec.Approvers = append(a.Spec.Approvers, "mallory")
				decision(true, "mallory")(a)
			},
			wantErr: "only spec.decision may change"},
		{name: "nobody extends the expiry", user: f.alice,
			change:  func(a *reconciler.Approval) { a.Spec.ExpiresAt = metav1.NewTime(a.Spec.ExpiresAt.Add(time.Hour)) },
			wantErr: "only spec.decision may change"},
		{name: "nobody moves the approval to another execution", user: f.alice,
			change:  func(a *reconciler.Approval) { a.Labels[reconciler.LabelExecution] = "web-99" },
			wantErr: "only spec.decision may change"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := f.create(t, reconciler.DisplayName("policy", i+1), "prod", approvers, time.Hour)
			if tt.decided != nil {
				require.NoError(t, updateAs(t, f.alice, f.ns, a.Name, decision(*tt.decided, "alice")))
			}
			err := updateAs(t, tt.user, f.ns, a.Name, tt.change)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.True(t, apierrors.IsForbidden(err) || apierrors.IsInvalid(err), "want a denial, got %v", err)
			assert.Contains(t, err.Error(), "ValidatingAdmissionPolicy 'ebb-approvals'")
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}

	t.Run("a new approval carries no decision", func(t *testing.T) {
		a := f.approval("policy#99", "prod", approvers, time.Hour)
		a.Spec.Decision = &reconciler.Decision{Approved: true, By: "kubernetes-admin", At: metav1.Now()}
		_, err := f.admin.CreateApproval(context.Background(), a)
		require.ErrorContains(t, err, "a new approval must not carry a decision")
	})
}

func ptrTo[T any](v T) *T { return &v }
