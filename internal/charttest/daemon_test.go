package charttest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"ebb.dev/ebb/internal/daemontest"
	"ebb.dev/ebb/internal/gitserver"
	"ebb.dev/ebb/internal/proc"
	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

// install is one Helm release of the chart in the dev cluster, installed the way
// docs/install.md says, with the Git repository it follows.
type install struct {
	t         *testing.T
	release   string
	namespace string
	repo      *gitserver.WorkTree
	repoURL   string
	admin     kubernetes.Interface
	store     *reconciler.Store
}

const (
	gitUser     = "ebb"
	gitPassword = "git-pa55word-not-for-logs"
	hookSecret  = "webhook-s3cret-not-for-logs"
)

// installChart serves a new Git repository with basic auth, creates the namespace and the Git
// credentials and webhook Secrets with kubectl, and runs `helm install` with set, as the
// quickstart in docs/install.md does. before runs after the Secrets exist, before helm. The CRDs
// are the cluster's already (TestMain applied them), as for a second release in a cluster:
// crds.install is false. TestUpgradeFromPreviousChart tests the chart's own CRDs.
func installChart(t *testing.T, release, namespace string, before func(*install), set ...string) *install {
	t.Helper()
	dir := t.TempDir()
	srv, err := gitserver.New(filepath.Join(dir, "server"), gitserver.Options{Username: gitUser, Password: gitPassword})
	require.NoError(t, err)
	t.Cleanup(func() { srv.Close() })
	in := &install{t: t, release: release, namespace: namespace, admin: kubernetes.NewForConfigOrDie(dev.Config)}
	in.repoURL, err = srv.CreateRepo("deploy")
	require.NoError(t, err)
	in.repo, err = gitserver.Clone(srv.AuthURL("deploy", gitUser, gitPassword), filepath.Join(dir, "work"))
	require.NoError(t, err)
	in.store = reconciler.NewStore(dynamic.NewForConfigOrDie(dev.Config), namespace)

	for _, args := range [][]string{
		{"create", "namespace", namespace},
		// The pod must meet the restricted Pod Security Standard.
		{"label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"},
		{"-n", namespace, "create", "secret", "generic", "ebb-git", "--from-literal=username=" + gitUser, "--from-literal=password=" + gitPassword},
		{"-n", namespace, "create", "secret", "generic", "ebb-webhook", "--from-literal=secret=" + hookSecret},
	} {
		out, err := kubectl(dev.Kubeconfig, "", args...)
		require.NoError(t, err, out)
	}
	if before != nil {
		before(in)
	}
	args := []string{"--kubeconfig", dev.Kubeconfig, "install", release, chartDir, "--namespace", namespace, "--create-namespace",
		"--set", "git.url=" + in.repoURL,
		"--set", "git.credentials.existingSecret=ebb-git",
		"--set", "webhook.existingSecret=ebb-webhook",
		"--set", "crds.install=false",
		"--wait", "--timeout", "60s"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := helm(args...)
	require.NoError(t, err, out)
	t.Cleanup(func() {
		if out, err := helm("--kubeconfig", dev.Kubeconfig, "uninstall", release, "--namespace", namespace, "--wait"); err != nil {
			t.Errorf("helm uninstall %s: %v\n%s", release, err, out)
		}
	})
	return in
}

// serviceAccountConfig returns a client config of cluster c that impersonates the
// ServiceAccount ns/name: it has exactly the rights RBAC grants that account.
func serviceAccountConfig(c *testcluster.Cluster, ns, name string) *rest.Config {
	cfg := rest.CopyConfig(c.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + name}
	return cfg
}

// daemon is the real ebb binary started with the installed Deployment's own arguments, as
// its pod would be: the mounted ConfigMap and Secrets become local files, and its cluster
// credentials are those of the chart's ServiceAccount.
type daemon struct {
	*daemontest.Daemon
	t    *testing.T
	addr string
}

// startDaemon runs the release's daemon out of cluster, impersonating its ServiceAccount.
func (in *install) startDaemon() *daemon {
	t := in.t
	t.Helper()
	ctx := context.Background()
	dep, err := in.admin.AppsV1().Deployments(in.namespace).Get(ctx, in.release, metav1.GetOptions{})
	require.NoError(t, err)
	pod := dep.Spec.Template.Spec
	c := pod.Containers[0]
	dir := t.TempDir()

	// Each volume the pod mounts becomes a local directory with the same files.
	mounts := map[string]string{}
	for _, v := range pod.Volumes {
		local := filepath.Join(dir, v.Name)
		require.NoError(t, os.MkdirAll(local, 0o700))
		files := map[string][]byte{}
		switch {
		case v.ConfigMap != nil:
			cm, err := in.admin.CoreV1().ConfigMaps(in.namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			require.NoError(t, err)
			for k, val := range cm.Data {
				files[k] = []byte(val)
			}
		case v.Secret != nil:
			s, err := in.admin.CoreV1().Secrets(in.namespace).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
			require.NoError(t, err)
			files = s.Data
		}
		for k, val := range files {
			require.NoError(t, os.WriteFile(filepath.Join(local, k), val, 0o600))
		}
		mounts[v.Name] = local
	}
	replacer := []string{"$(POD_NAME)", in.release + "-pod-0"}
	for _, m := range c.VolumeMounts {
		replacer = append(replacer, m.MountPath, mounts[m.Name])
	}
	r := strings.NewReplacer(replacer...)
	port := freePort(t)
	var args []string
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--listen=") {
			a = fmt.Sprintf("--listen=127.0.0.1:%d", port)
		}
		args = append(args, r.Replace(a))
	}
	kubeconfig := filepath.Join(dir, "serviceaccount.kubeconfig")
	require.NoError(t, testcluster.WriteKubeconfig(kubeconfig, "dev", serviceAccountConfig(dev, in.namespace, pod.ServiceAccountName)))
	args = append(args, "--kubeconfig", kubeconfig, "--log-level=debug")

	return &daemon{
		Daemon: daemontest.Start(t, ebbBin, []string{"POD_NAMESPACE=" + in.namespace}, args...),
		t:      t, addr: fmt.Sprintf("127.0.0.1:%d", port),
	}
}

// hook POSTs a GitLab push webhook with token and returns the status code.
func (d *daemon) hook(token string) int {
	d.t.Helper()
	var code int
	require.Eventually(d.t, func() bool {
		req, _ := http.NewRequest(http.MethodPost, "http://"+d.addr+"/webhook", strings.NewReader(`{"object_kind":"push"}`))
		req.Header.Set("X-Gitlab-Event", "Push Hook")
		req.Header.Set("X-Gitlab-Token", token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		code = resp.StatusCode
		return true
	}, 30*time.Second, 20*time.Millisecond)
	return code
}

// commit commits the files of pipelines, pushes, and triggers a poll with the webhook.
func (in *install) commit(d *daemon, message string, files map[string]string) string {
	in.t.Helper()
	sha, err := in.repo.CommitAndPush(message, files)
	require.NoError(in.t, err)
	require.Equal(in.t, http.StatusAccepted, d.hook(hookSecret))
	return sha
}

// waitExecution waits for the Deploy execution of pipeline at commit to reach status.
func (in *install) waitExecution(pipeline, commit string, status reconciler.Status) *reconciler.Execution {
	in.t.Helper()
	return daemontest.WaitExecution(in.t, in.store, pipeline, commit, status)
}

// pipelineFiles returns a pipeline deploying 3 replicas of image tag to each of stages
// (name, cluster, namespace); extra adds a ConfigMap named extra to the release.
func pipelineFiles(name, tag string, extra bool, stages ...[3]string) map[string]string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: ebb.dev/v1alpha1
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
`, name, tag)
	for _, s := range stages {
		fmt.Fprintf(&b, "  - {name: %s, cluster: %s, namespace: %s, verify: {rollout: {timeout: 1m}}, rollback: true}\n", s[0], s[1], s[2])
	}
	var extraFiles []string
	if extra {
		extraFiles = append(extraFiles, "extra.yaml")
	}
	files := daemontest.AppFiles(name, 3, extraFiles...)
	files["pipelines/"+name+".yaml"] = b.String()
	files["apps/"+name+"/extra.yaml"] = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\ndata: {release: " + tag + "}\n"
	return files
}

func freePort(t *testing.T) int {
	t.Helper()
	port, err := proc.FreePort()
	require.NoError(t, err)
	return port
}
