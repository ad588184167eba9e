package realapps

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

// TestRotatedKubeconfigSecret reaches the prod stage's cluster through a kubeconfig Secret, as
// a Helm install does. The Secret is replaced by one with a new client certificate (another
// user), and the old user loses every right on prod. The running daemon, not restarted, says
// it saw the rotation (a log line and an Event on the Secret, neither holding the secret), and
// the next release reaches prod with the new certificate. Then the same again while a release
// verifies in prod: that execution completes.
func TestRotatedKubeconfigSecret(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const oldUser, newUser, secretName = "realapps-rotation-old", "realapps-rotation-new", "prod-kubeconfig"
	prodAdmin := kubernetes.NewForConfigOrDie(prod.Config)
	everything := rbacv1.PolicyRule{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"*"}}
	oldBinding := grant(t, prodAdmin, oldUser, "rotation-old", everything)
	oldKubeconfig, oldKey := userKubeconfig(t, prod, oldUser)

	// The prod stage's health check; from release v7 on, its first probe says the stage verifies.
	var armed atomic.Bool
	verifying := make(chan struct{})
	var once sync.Once
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if armed.Load() {
			once.Do(func() { close(verifying) })
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(health.Close)

	e := newEnv(t, "rotation", guestbook, envOptions{})
	// 50 probes 200ms apart: 10s of verification, in which the test rotates the kubeconfig.
	e.prodHealth = fmt.Sprintf("{url: %q, interval: 200ms, successes: 50, failures: 3, timeout: 2m}", health.URL)
	home := kubernetes.NewForConfigOrDie(dev.Config)
	_, err := home.CoreV1().Secrets(e.records).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secretName},
		Data:       map[string][]byte{"kubeconfig": oldKubeconfig},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(e.config, []byte(fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
kind: Config
clusters:
- name: dev
  kubeconfig: %s
- name: prod
  kubeconfigSecret: {namespace: %s, name: %s, key: kubeconfig}
`, dev.Kubeconfig, e.records, secretName)), 0o600))
	d := e.startDaemon("--retry-backoff", "1s")
	e.requireCompleted(e.release(guestbook.tag, "release v5 as written"))
	require.Equal(t, e.imageOf(guestbook.tag), image(t, e.prodCS, e.prodNS(), guestbook.service))

	// Rotate: a new certificate for a new user in the Secret, then the old user loses its rights.
	newBinding := grant(t, prodAdmin, newUser, "rotation-new", everything)
	newKubeconfig, newKey := userKubeconfig(t, prod, newUser)
	secret, err := home.CoreV1().Secrets(e.records).Get(ctx, secretName, metav1.GetOptions{})
	require.NoError(t, err)
	secret.Data["kubeconfig"] = newKubeconfig
	_, err = home.CoreV1().Secrets(e.records).Update(ctx, secret, metav1.UpdateOptions{})
	require.NoError(t, err)
	d.WaitLog(time.Minute, "msg", "kubeconfig Secret changed; the next request to the cluster uses it", "cluster", "prod")
	var rotated []corev1.Event
	require.Eventually(t, func() bool {
		list, err := home.CoreV1().Events(e.records).List(ctx, metav1.ListOptions{FieldSelector: "reason=KubeconfigRotated"})
		require.NoError(t, err)
		rotated = list.Items
		return len(rotated) > 0
	}, 30*time.Second, 50*time.Millisecond, "no KubeconfigRotated Event on the Secret")
	assert.Equal(t, "Secret", rotated[0].InvolvedObject.Kind)
	assert.Equal(t, secretName, rotated[0].InvolvedObject.Name)
	assert.Contains(t, rotated[0].Message, "prod")

	require.NoError(t, prodAdmin.RbacV1().ClusterRoleBindings().Delete(ctx, oldBinding, metav1.DeleteOptions{}))
	oldCfg, err := prod.UserConfig(oldUser)
	require.NoError(t, err)
	asOld := kubernetes.NewForConfigOrDie(oldCfg)
	require.Eventually(t, func() bool {
		_, err := asOld.AppsV1().Deployments(e.prodNS()).List(ctx, metav1.ListOptions{})
		return apierrors.IsForbidden(err)
	}, 30*time.Second, 50*time.Millisecond, "the old user may still list Deployments on prod")

	sha := e.release("v6", "release v6 after the rotation")
	x := e.requireCompleted(sha)
	armed.Store(true)
	assert.Equal(t, e.imageOf("v6"), image(t, e.prodCS, e.prodNS(), guestbook.service), "prod was not reached with the new certificate")
	assert.Equal(t, 1, len(e.deploys(sha)), "executions of the release: %s", e.describeAll())
	assert.Empty(t, e.rollbacks())
	assert.Equal(t, reconciler.Completed, x.Status.Phase)
	assert.Equal(t, 1, d.CountLogs("msg", "starting"), "the daemon restarted")

	// A rotation while the prod stage verifies: a third user's certificate replaces the
	// second's, which then loses its rights, all during the health check. The execution, which
	// holds clients built from the second, completes: what it still needs of prod it gets, or
	// it waits and retries with the new clients.
	const thirdUser = "realapps-rotation-third"
	grant(t, prodAdmin, thirdUser, "rotation-third", everything)
	thirdKubeconfig, thirdKey := userKubeconfig(t, prod, thirdUser)
	sha = e.release("v7", "release v7, verified while the kubeconfig rotates")
	select {
	case <-verifying:
	case <-time.After(2 * time.Minute):
		t.Fatalf("the prod stage's health check never started: %s", e.describeAll())
	}
	secret, err = home.CoreV1().Secrets(e.records).Get(ctx, secretName, metav1.GetOptions{})
	require.NoError(t, err)
	secret.Data["kubeconfig"] = thirdKubeconfig
	_, err = home.CoreV1().Secrets(e.records).Update(ctx, secret, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return d.CountLogs("msg", "kubeconfig Secret changed; the next request to the cluster uses it", "cluster", "prod") == 2
	}, time.Minute, 20*time.Millisecond, "the second rotation was not seen")
	require.NoError(t, prodAdmin.RbacV1().ClusterRoleBindings().Delete(ctx, newBinding, metav1.DeleteOptions{}))
	newCfg, err := prod.UserConfig(newUser)
	require.NoError(t, err)
	asNew := kubernetes.NewForConfigOrDie(newCfg)
	require.Eventually(t, func() bool {
		_, err := asNew.AppsV1().Deployments(e.prodNS()).List(ctx, metav1.ListOptions{})
		return apierrors.IsForbidden(err)
	}, 30*time.Second, 50*time.Millisecond, "the second user may still list Deployments on prod")
	require.False(t, e.deploys(sha)[0].Status.Phase.Terminal(), "the release was verified before the rotation ended: %s", e.describeAll())
	x = e.waitDone(sha, 3*time.Minute)
	t.Logf("the release verified across the rotation: %s; daemon log lines saying forbidden: %d", describe(x), len(d.Lines("forbidden")))
	assert.Equal(t, reconciler.Completed, x.Status.Phase, "%s; all: %s", describe(x), e.describeAll())
	assert.Equal(t, 1, len(e.deploys(sha)), "executions of the release: %s", e.describeAll())
	assert.Empty(t, e.rollbacks())
	assert.Equal(t, e.imageOf("v7"), image(t, e.prodCS, e.prodNS(), guestbook.service))

	// Neither private key, nor either kubeconfig, is in a log line, an Event or a record.
	var printed []string
	printed = append(printed, d.Lines("")...)
	events, err := home.CoreV1().Events(e.records).List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for _, ev := range events.Items {
		printed = append(printed, ev.Message)
	}
	for _, x := range e.executions() {
		printed = append(printed, x.Status.Comment)
	}
	all := strings.Join(printed, "\n")
	for _, secret := range [][]byte{oldKey, newKey, thirdKey, oldKubeconfig, newKubeconfig, thirdKubeconfig} {
		assert.NotContains(t, all, string(secret))
		assert.NotContains(t, all, base64.StdEncoding.EncodeToString(secret))
	}
}

// userKubeconfig returns a kubeconfig of cluster c for user (a new client certificate each
// call), and the certificate's private key.
func userKubeconfig(t *testing.T, c *testcluster.Cluster, user string) (kubeconfig, key []byte) {
	t.Helper()
	cfg, err := c.UserConfig(user)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), user+".kubeconfig")
	require.NoError(t, testcluster.WriteKubeconfig(path, c.Name, cfg))
	kubeconfig, err = os.ReadFile(path)
	require.NoError(t, err)
	return kubeconfig, cfg.KeyData
}

// mountSecret lays out dir as the kubelet mounts a Secret: each key a symlink through
// "..data" to a timestamped directory. Each call is one update of the Secret: a new
// directory, "..data" swapped to it in one rename, the old directory removed.
func mountSecret(t *testing.T, dir string, data map[string]string) {
	t.Helper()
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	gen := fmt.Sprintf("..%d", time.Now().UnixNano())
	require.NoError(t, os.MkdirAll(filepath.Join(dir, gen), 0o700))
	for key, value := range data {
		require.NoError(t, os.WriteFile(filepath.Join(dir, gen, key), []byte(value), 0o600))
		if _, err := os.Lstat(filepath.Join(dir, key)); os.IsNotExist(err) {
			require.NoError(t, os.Symlink(filepath.Join("..data", key), filepath.Join(dir, key)))
		}
	}
	require.NoError(t, os.Symlink(gen, filepath.Join(dir, "..data_tmp")))
	require.NoError(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	if old != "" {
		require.NoError(t, os.RemoveAll(filepath.Join(dir, old)))
	}
}

// TestRotatedGitCredentials follows a repository served over HTTP with basic auth, with the
// credentials in a mounted Secret (--git-credentials-dir), as the chart runs ebb. The Git
// server's password changes, and the next push is not seen: the poll is refused. Then the
// mounted Secret changes, and the running daemon, not restarted, fetches with the new
// password and releases the commit. Neither password is in its log.
func TestRotatedGitCredentials(t *testing.T) {
	t.Parallel()
	const user, password, rotated = "ebb", "realapps-pa55word", "n3w-g1t-s3cret-after-rotation"
	e := newEnv(t, "gitrotation", guestbook, envOptions{server: true})
	e.daemonEnv = nil
	creds := filepath.Join(e.dir, "git-credentials")
	mountSecret(t, creds, map[string]string{"username": user, "password": password})
	d := e.startDaemon("--git-credentials-dir", creds)
	e.requireCompleted(e.release(guestbook.tag, "release v5 as written"))

	e.gitServer.SetCredentials(user, rotated)
	_, err := e.repo.Git("remote", "set-url", "origin", e.gitServer.AuthURL(e.name, user, rotated))
	require.NoError(t, err)
	sha := e.release("v6", "release v6, pushed after the password changed")
	require.Eventually(t, func() bool {
		return len(d.Lines("authentication required")) > 0
	}, time.Minute, 20*time.Millisecond, "the old password was not refused")
	assert.Empty(t, e.deploys(sha), "the commit was seen with the old password")

	mountSecret(t, creds, map[string]string{"username": user, "password": rotated})
	d.WaitLog(time.Minute, "msg", "git credentials changed; the next request uses them")
	x := e.requireCompleted(sha)
	assert.Equal(t, 1, len(e.deploys(sha)), "executions of the release: %s", describe(x))
	assert.Equal(t, e.imageOf("v6"), image(t, e.prodCS, e.prodNS(), guestbook.service))
	assert.Equal(t, 1, d.CountLogs("msg", "starting"), "the daemon restarted")
	all := strings.Join(d.Lines(""), "\n")
	assert.NotContains(t, all, password)
	assert.NotContains(t, all, rotated)
}
