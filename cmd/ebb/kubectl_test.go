package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

// records is a namespace of the test cluster holding Pipeline objects and executions, and a
// kubeconfig whose current context ("records") has that namespace, beside a context
// ("elsewhere") whose namespace is another, empty one.
type records struct {
	ns, other  string
	kubeconfig string
	store      *reconciler.Store
}

func newRecords(t *testing.T) *records {
	t.Helper()
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(cluster.Config)
	top, err := testcluster.ModuleRoot()
	require.NoError(t, err)
	require.NoError(t, reconciler.InstallCRDs(ctx, dyn, filepath.Join(top, "charts", "ebb", "crds")))
	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	r := &records{}
	for _, name := range []*string{&r.ns, &r.other} {
		ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ebb-kubectl-"}}, metav1.CreateOptions{})
		require.NoError(t, err)
		*name = ns.Name
		t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}) })
	}
	r.store = reconciler.NewStore(dyn, r.ns)
	for _, p := range pipelineObjects(r.store, time.Now()) {
		_, err := r.store.SavePipeline(ctx, p, nil)
		require.NoError(t, err)
	}
	for i := 0; i < 2; i++ {
		_, err := r.store.CreateExecution(ctx, &reconciler.Execution{Spec: reconciler.ExecutionSpec{
			Pipeline: "web", Kind: reconciler.KindDeploy, Commit: "0123456789abcdef0123456789abcdef01234567", ShortCommit: "0123456"}})
		require.NoError(t, err)
	}

	cfg, err := clientcmd.LoadFromFile(cluster.Kubeconfig)
	require.NoError(t, err)
	base := cfg.Contexts[cfg.CurrentContext]
	for name, ns := range map[string]string{"records": r.ns, "elsewhere": r.other} {
		c := base.DeepCopy()
		c.Namespace = ns
		cfg.Contexts[name] = c
	}
	cfg.CurrentContext = "records"
	r.kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	require.NoError(t, clientcmd.WriteToFile(*cfg, r.kubeconfig))
	return r
}

// TestClusterCommandsHaveKubectlFlags: every command that talks to a cluster takes kubectl's
// connection flags.
func TestClusterCommandsHaveKubectlFlags(t *testing.T) {
	root := newRootCommand()
	for _, name := range []string{"run", "pipelines", "executions", "execution", "approve", "reject", "reconcile", "version", "plan"} {
		cmd, _, err := root.Find([]string{name})
		require.NoError(t, err, name)
		for _, flag := range []string{"kubeconfig", "context", "namespace", "as", "as-group", "token", "server", "request-timeout"} {
			assert.NotNil(t, cmd.Flags().Lookup(flag), "ebb %s --%s", name, flag)
		}
		assert.Equal(t, "n", cmd.Flags().Lookup("namespace").Shorthand, name)
	}
}

// TestNamespaceAndContextFromKubeconfig: with no -n, every command reads the records of the
// kubeconfig context's namespace; --context picks another context, and so its namespace; -n
// wins over both.
func TestNamespaceAndContextFromKubeconfig(t *testing.T) {
	r := newRecords(t)
	for _, tc := range []struct {
		name string
		args []string
		// in checks the output of the command run against r.ns; elsewhere against r.other.
		in, elsewhere func(t *testing.T, code int, stdout, stderr string)
	}{
		{
			name: "pipelines", args: []string{"pipelines", "-o", "name"},
			in: func(t *testing.T, code int, stdout, stderr string) {
				require.Equal(t, 0, code, stderr)
				assert.Equal(t, "pipeline.ebb.dev/api\npipeline.ebb.dev/web\n", stdout)
			},
			elsewhere: func(t *testing.T, code int, stdout, stderr string) {
				require.Equal(t, 0, code, stderr)
				assert.Empty(t, stdout)
			},
		},
		{
			name: "executions", args: []string{"executions", "-o", "jsonpath={.items[*].spec.displayName}"},
			in: func(t *testing.T, code int, stdout, stderr string) {
				require.Equal(t, 0, code, stderr)
				assert.Equal(t, "web#1 web#2", stdout)
			},
			elsewhere: func(t *testing.T, code int, stdout, stderr string) {
				require.Equal(t, 0, code, stderr)
				assert.Empty(t, stdout)
			},
		},
		{
			name: "execution", args: []string{"execution", "web#2", "-o", "jsonpath={.spec.displayName} {.metadata.namespace}"},
			in: func(t *testing.T, code int, stdout, stderr string) {
				require.Equal(t, 0, code, stderr)
				assert.Equal(t, "web#2 "+r.ns, stdout)
			},
			elsewhere: func(t *testing.T, code int, stdout, stderr string) {
				assert.Equal(t, 1, code)
				assert.Contains(t, stderr, "execution web#2 not found in namespace "+r.other)
			},
		},
		{
			name: "reconcile", args: []string{"reconcile", "nosuch", "--no-wait"},
			in: func(t *testing.T, code int, stdout, stderr string) {
				assert.Equal(t, 1, code)
				assert.Contains(t, stderr, `pipeline "nosuch" not found in namespace `+r.ns)
			},
			elsewhere: func(t *testing.T, code int, stdout, stderr string) {
				assert.Equal(t, 1, code)
				assert.Contains(t, stderr, `pipeline "nosuch" not found in namespace `+r.other)
			},
		},
		{
			name: "version", args: []string{"version"},
			in: func(t *testing.T, code int, stdout, stderr string) {
				assert.Equal(t, 1, code)
				assert.Contains(t, stderr, "no Deployment labelled app.kubernetes.io/name=ebb in namespace "+r.ns)
			},
			elsewhere: func(t *testing.T, code int, stdout, stderr string) {
				assert.Equal(t, 1, code)
				assert.Contains(t, stderr, "in namespace "+r.other)
			},
		},
		{
			name: "approve", args: []string{"approve", "web#2"},
			in: func(t *testing.T, code int, stdout, stderr string) {
				assert.Equal(t, 1, code)
				assert.Contains(t, stderr, "web#2")
				assert.NotContains(t, stderr, "not found in namespace "+r.other)
			},
			elsewhere: func(t *testing.T, code int, stdout, stderr string) {
				assert.Equal(t, 1, code)
				assert.Contains(t, stderr, r.other)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kc := []string{"--kubeconfig", r.kubeconfig}
			code, stdout, stderr := ebb(t, append(tc.args, kc...)...)
			t.Run("context namespace", func(t *testing.T) { tc.in(t, code, stdout, stderr) })
			code, stdout, stderr = ebb(t, append(tc.args, append(kc, "--context", "elsewhere")...)...)
			t.Run("--context", func(t *testing.T) { tc.elsewhere(t, code, stdout, stderr) })
			code, stdout, stderr = ebb(t, append(tc.args, append(kc, "--context", "elsewhere", "-n", r.ns)...)...)
			t.Run("-n wins", func(t *testing.T) { tc.in(t, code, stdout, stderr) })
		})
	}

	// --as impersonates: a user with no rights is refused, by name.
	code, _, stderr := ebb(t, "pipelines", "--kubeconfig", r.kubeconfig, "--as", "nobody")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, `User "nobody" cannot list resource "pipelines"`)
}

// TestOutputFormats: -o takes cli-runtime's printers where a command prints objects, and a bad
// -o or a jsonpath that does not parse is a usage error before anything is asked.
func TestOutputFormats(t *testing.T) {
	r := newRecords(t)
	kc := []string{"--kubeconfig", r.kubeconfig}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"pipelines", "-o", "jsonpath={range .items[*]}{.spec.pipeline}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"}, "api=False\nweb=True\n"},
		{[]string{"executions", "-o", "name"}, "execution.ebb.dev/web-1\nexecution.ebb.dev/web-2\n"},
		{[]string{"execution", "web#1", "-o", "name"}, "execution.ebb.dev/web-1\n"},
		{[]string{"executions", "--pipeline", "web", "-o", "go-template={{range .items}}{{.spec.number}} {{end}}"}, "1 2 "},
	} {
		code, stdout, stderr := ebb(t, append(tc.args, kc...)...)
		require.Equal(t, 0, code, "%v: %s", tc.args, stderr)
		assert.Equal(t, tc.want, stdout, tc.args)
	}
	code, stdout, stderr := ebb(t, append([]string{"execution", "web#1", "-o", "yaml"}, kc...)...)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "apiVersion: ebb.dev/v1alpha1\nkind: Execution\n")

	for _, bad := range [][]string{{"executions", "-o", "xml"}, {"pipelines", "-o", "jsonpath={.items[}"}, {"execution", "web#1", "-o", "wide"}} {
		code, stdout, stderr := ebb(t, append(bad, "--kubeconfig", filepath.Join(t.TempDir(), "none"))...)
		assert.Equal(t, 2, code, "%v: %s", bad, stderr)
		assert.Empty(t, stdout)
		assert.Contains(t, stderr, "--output", bad)
	}
}

// TestCompletion: shell completion offers the executions and pipelines of the cluster the
// command's flags name, and the deployment models of --model.
func TestCompletion(t *testing.T) {
	r := newRecords(t)
	complete := func(args ...string) []string {
		t.Helper()
		code, stdout, stderr := ebb(t, append([]string{cobra.ShellCompRequestCmd}, args...)...)
		require.Equal(t, 0, code, stderr)
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		require.NotEmpty(t, lines)
		assert.Equal(t, ":4", lines[len(lines)-1], "no file names: %s", stdout) // ShellCompDirectiveNoFileComp
		return lines[:len(lines)-1]
	}
	assert.Equal(t, []string{"web#1", "web#2"}, complete("execution", "--kubeconfig", r.kubeconfig, ""))
	assert.Equal(t, []string{"web#2"}, complete("approve", "--kubeconfig", r.kubeconfig, "web#2"))
	assert.Equal(t, []string{"api", "web"}, complete("reconcile", "--kubeconfig", r.kubeconfig, ""))
	assert.Equal(t, []string{"web"}, complete("executions", "--kubeconfig", r.kubeconfig, "--pipeline", "w"))
	assert.Empty(t, complete("execution", "--kubeconfig", r.kubeconfig, "--context", "elsewhere", ""), "the other context's namespace has none")
	assert.Equal(t, []string{"rolling", "blue-green"}, complete("new", "--model", ""))
	assert.Contains(t, complete("executions", "-o", ""), "jsonpath")
}

// TestUsageErrorsExitTwo: as kubectl, a wrong call exits 2 and a failure of the command 1.
func TestUsageErrorsExitTwo(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"run", "--config", "x"}, 2, `required flag(s) "repo" not set`},
		{[]string{"execution"}, 2, "accepts 1 arg(s), received 0"},
		{[]string{"reconcile", "a", "b"}, 2, "accepts 1 arg(s), received 2"},
		{[]string{"pipelines", "extra"}, 2, `unknown command "extra" for "ebb pipelines"`},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate" for "ebb"`},
		{[]string{"executions", "--no-such-flag"}, 2, "unknown flag: --no-such-flag"},
		{[]string{"execution", "not-a-name"}, 2, "not-a-name"},
		{[]string{"version", "--client", "-o", "xml"}, 2, `-o "xml"`},
		{[]string{"pipelines", "--kubeconfig", "/nonexistent/kubeconfig"}, 1, "/nonexistent/kubeconfig"},
	} {
		code, _, stderr := ebb(t, tc.args...)
		assert.Equal(t, tc.code, code, "%v: %s", tc.args, stderr)
		assert.Contains(t, stderr, tc.want, tc.args)
	}
}

// TestVersion: the binary's version, and the daemon's from the image tag of the ebb
// Deployment in the records' namespace.
func TestVersion(t *testing.T) {
	r := newRecords(t)
	code, stdout, stderr := ebb(t, "version", "--client")
	require.Equal(t, 0, code, stderr)
	assert.Regexp(t, `^Client Version: \(devel\) \(.*go1\.[0-9]+`, stdout, "a test binary has no -ldflags version")

	cs := kubernetes.NewForConfigOrDie(cluster.Config)
	labels := map[string]string{"app.kubernetes.io/name": "ebb", "app.kubernetes.io/instance": "ebb"}
	_, err := cs.AppsV1().Deployments(r.ns).Create(context.Background(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "ebb", Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "ebb", Image: "registry.example:5000/ebb-dev/ebb:9.9.9"}}},
			},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	code, stdout, stderr = ebb(t, "version", "--kubeconfig", r.kubeconfig)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "Daemon Version: 9.9.9 (deployment "+r.ns+"/ebb, image registry.example:5000/ebb-dev/ebb:9.9.9)\n")
	code, stdout, stderr = ebb(t, "version", "--kubeconfig", r.kubeconfig, "-o", "json")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, `"daemonVersion": [`)
	assert.Contains(t, stdout, `"version": "9.9.9"`)

	assert.Equal(t, "1.2", imageTag("ghcr.io/ebb-dev/ebb:1.2@sha256:abc", ""))
	assert.Equal(t, "0.2.0", imageTag("localhost:5000/ebb", "0.2.0"), "a registry port is no tag")
}
