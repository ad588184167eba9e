// Package testcluster starts a real, local Kubernetes control plane for tests and for the demo:
// etcd, kube-apiserver, kube-controller-manager and kube-scheduler, with kwok simulating nodes
// and the pods scheduled to them. Pods whose image contains "broken" crash-loop and never become
// Ready ("broken-pull": they wait in ImagePullBackOff; "broken-oom": they were OOMKilled), so
// failed rollouts are real ones.
//
// Every process runs in its own process group with a parent-death signal; Stop ends them all
// within a few seconds and nothing is left listening. The binaries come from tools/build.sh
// (`make testbin`).
package testcluster

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"ebb.dev/ebb/internal/proc"
)

// Options say what cluster to start. The zero value is a usable cluster named "test" with one
// node, in a new temporary directory.
type Options struct {
	// Name names the cluster in its kubeconfig and in log messages, e.g. "dev" or "prod".
	Name string
	// Nodes is the number of kwok nodes; default 1. Each takes up to 1000 pods.
	Nodes int
	// Dir holds the cluster's certificates, etcd data, logs and kubeconfig. Default: a new
	// temporary directory, removed by Stop. A given Dir is kept, so its logs can be read.
	Dir string
	// BinDir holds the binaries; default BinDir().
	BinDir string
	// StartTimeout bounds the whole start; default 60s.
	StartTimeout time.Duration
}

// Cluster is a running control plane.
type Cluster struct {
	// Name is Options.Name.
	Name string
	// Dir is the cluster's working directory.
	Dir string
	// Config authenticates as a cluster administrator (group system:masters).
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file for Config.
	Kubeconfig string

	ca     *authority
	host   string
	ownDir bool
	bin    string
	// apiserverArgs start the API server again after StopAPIServer: same port, same etcd.
	apiserverArgs []string

	mu        sync.Mutex
	procs     []*proc.Process
	apiserver *proc.Process // nil while stopped by StopAPIServer
	stopped   bool
}

//go:embed stages/node-initialize.yaml
var stageNodeInitialize []byte

//go:embed stages/node-heartbeat-with-lease.yaml
var stageNodeHeartbeat []byte

//go:embed stages/pod-ready.yaml
var stagePodReady []byte

//go:embed stages/pod-crashloop.yaml
var stagePodCrashLoop []byte

//go:embed stages/pod-imagepull.yaml
var stagePodImagePull []byte

//go:embed stages/pod-oomkilled.yaml
var stagePodOOMKilled []byte

//go:embed stages/pod-complete.yaml
var stagePodComplete []byte

//go:embed stages/pod-delete.yaml
var stagePodDelete []byte

// Start starts a cluster and returns once its API server is ready and its nodes are Ready.
// On error, everything already started is stopped.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if opts.Name == "" {
		opts.Name = "test"
	}
	if opts.Nodes <= 0 {
		opts.Nodes = 1
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 60 * time.Second
	}
	if opts.BinDir == "" {
		if opts.BinDir, err = BinDir(); err != nil {
			return nil, err
		}
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, b)); err != nil {
			return nil, fmt.Errorf("test cluster binary %s is missing from %s; run `make testbin`", b, opts.BinDir)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()

	c := &Cluster{Name: opts.Name, Dir: opts.Dir, bin: opts.BinDir}
	if c.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "ebb-cluster-"+opts.Name+"-"); err != nil {
			return nil, err
		}
		c.ownDir = true
	} else if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = c.Stop()
			err = fmt.Errorf("start cluster %q: %w", opts.Name, err)
		}
	}()

	if err := c.startControlPlane(ctx, opts.BinDir); err != nil {
		return nil, err
	}
	if err := c.startControllers(opts.BinDir); err != nil {
		return nil, err
	}
	if err := c.addNodes(ctx, opts.Nodes); err != nil {
		return nil, err
	}
	return c, nil
}

// startControlPlane starts etcd and kube-apiserver and waits until the API server is ready.
func (c *Cluster) startControlPlane(ctx context.Context, bin string) error {
	var err error
	if c.ca, err = newAuthority(c.Name); err != nil {
		return err
	}
	servingCert, servingKey, err := c.ca.serving()
	if err != nil {
		return err
	}
	saPub, saKey, err := serviceAccountKey()
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"ca.crt": c.ca.certPEM, "apiserver.crt": servingCert, "apiserver.key": servingKey,
		"sa.pub": saPub, "sa.key": saKey,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(c.Dir, name), data, 0o600); err != nil {
			return err
		}
	}
	ports := make([]int, 3)
	for i := range ports {
		if ports[i], err = proc.FreePort(); err != nil {
			return err
		}
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	c.host = "https://127.0.0.1:" + strconv.Itoa(ports[2])

	if _, err := c.start(bin, "etcd",
		"--name=default",
		"--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL,
		"--unsafe-no-fsync=true", "--log-level=warn",
	); err != nil {
		return err
	}
	// The API server waits for etcd by itself, so both start at once.
	c.apiserverArgs = []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		// The "kubernetes" Service's endpoints may not be loopback; nothing here needs them.
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(ports[2]),
		"--tls-cert-file=" + c.path("apiserver.crt"), "--tls-private-key-file=" + c.path("apiserver.key"),
		"--client-ca-file=" + c.path("ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + c.path("sa.pub"),
		"--service-account-signing-key-file=" + c.path("sa.key"),
		// A /16 holds the hundreds of Services that scale tests create.
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=Node,RBAC",
		// Pods need no token: kwok runs no containers. Without this plugin a pod in a new
		// namespace would wait for the service-account controller.
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		"--profiling=false",
		"--max-requests-inflight=1000", "--max-mutating-requests-inflight=500",
	}
	if c.apiserver, err = c.start(bin, "kube-apiserver", c.apiserverArgs...); err != nil {
		return err
	}

	admin, err := c.userConfig("ebb-admin", []string{"system:masters"})
	if err != nil {
		return err
	}
	c.Config = admin
	if err := c.waitReady(ctx); err != nil {
		return err
	}
	c.Kubeconfig = c.path("kubeconfig")
	return WriteKubeconfig(c.Kubeconfig, c.Name, admin)
}

// startControllers starts the controller manager, the scheduler and kwok.
func (c *Cluster) startControllers(bin string) error {
	stages := bytes.Join([][]byte{
		stageNodeInitialize, stageNodeHeartbeat, stagePodReady, stagePodCrashLoop, stagePodImagePull, stagePodOOMKilled, stagePodComplete, stagePodDelete,
	}, []byte("\n---\n"))
	if err := os.WriteFile(c.path("kwok-stages.yaml"), stages, 0o600); err != nil {
		return err
	}
	kubeconfig := "--kubeconfig=" + c.Kubeconfig
	if _, err := c.start(bin, "kube-controller-manager", kubeconfig,
		"--leader-elect=false",
		"--controllers=*,-serviceaccount-token,-csrsigning",
		"--secure-port=0",
		"--use-service-account-credentials=false",
		"--root-ca-file="+c.path("ca.crt"),
		"--kube-api-qps=500", "--kube-api-burst=1000",
		"--concurrent-deployment-syncs=20", "--concurrent-replicaset-syncs=20",
	); err != nil {
		return err
	}
	if _, err := c.start(bin, "kube-scheduler", kubeconfig,
		"--leader-elect=false", "--secure-port=0",
		"--kube-api-qps=500", "--kube-api-burst=1000",
	); err != nil {
		return err
	}
	_, err := c.start(bin, "kwok", kubeconfig,
		"--config="+c.path("kwok-stages.yaml"),
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
		"--cidr=10.244.0.0/16",
		"--node-ip=10.240.0.1",
		"--node-lease-duration-seconds=40",
	)
	return err
}

// addNodes creates n kwok-managed nodes and waits until kwok reports them Ready.
func (c *Cluster) addNodes(ctx context.Context, n int) error {
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	for i := range n {
		name := fmt.Sprintf("kwok-node-%d", i)
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name:        name,
				Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"},
				Labels: map[string]string{
					"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
				},
			},
			Status: corev1.NodeStatus{
				Allocatable: corev1.ResourceList{"cpu": mustQuantity("64"), "memory": mustQuantity("256Gi"), "pods": mustQuantity("1000")},
				Capacity:    corev1.ResourceList{"cpu": mustQuantity("64"), "memory": mustQuantity("256Gi"), "pods": mustQuantity("1000")},
			},
		}
		if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create node %s: %w", name, err)
		}
	}
	return c.poll(ctx, "nodes Ready", func(ctx context.Context) (bool, error) {
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		ready := 0
		for _, node := range nodes.Items {
			for _, cond := range node.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		return ready >= n, nil
	})
}

// waitReady polls the API server's /readyz until it answers ok.
func (c *Cluster) waitReady(ctx context.Context) error {
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	return c.poll(ctx, "kube-apiserver /readyz", func(ctx context.Context) (bool, error) {
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(body) == "ok", nil
	})
}

// poll runs cond every 50ms until it holds, failing early when a process has exited.
func (c *Cluster) poll(ctx context.Context, what string, cond wait.ConditionWithContextFunc) error {
	err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		for _, p := range c.processes() {
			if err := p.Exited(); err != nil {
				return false, err
			}
		}
		return cond(ctx)
	})
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("wait for %s: %w (logs in %s)", what, err, c.Dir)
	}
	return err
}

// start runs one binary from bin, recording it so that Stop ends it.
func (c *Cluster) start(bin, name string, args ...string) (*proc.Process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil, errors.New("cluster is stopped")
	}
	p, err := proc.Start(c.Dir, name, filepath.Join(bin, name), args...)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

// StopAPIServer kills the cluster's API server with SIGKILL, as a crash or an outage of the
// control plane would, and returns once it is gone: clients then get "connection refused".
// etcd, the controllers and kwok keep running (and keep retrying), so StartAPIServer brings
// the same cluster back.
func (c *Cluster) StopAPIServer() error {
	c.mu.Lock()
	p := c.apiserver
	c.apiserver = nil
	if p != nil {
		for i, q := range c.procs {
			if q == p {
				c.procs = append(c.procs[:i:i], c.procs[i+1:]...)
				break
			}
		}
	}
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("cluster %q: the API server is not running", c.Name)
	}
	if err := p.Stop(0); err != nil {
		return fmt.Errorf("cluster %q: stop the API server: %w", c.Name, err)
	}
	return nil
}

// StartAPIServer starts the API server that StopAPIServer stopped, on the same port, with the
// same certificates and etcd data, and returns once it is ready: every object is still there
// and every client config of the cluster works again.
func (c *Cluster) StartAPIServer(ctx context.Context) error {
	c.mu.Lock()
	running := c.apiserver != nil
	c.mu.Unlock()
	if running {
		return fmt.Errorf("cluster %q: the API server is already running", c.Name)
	}
	p, err := c.start(c.bin, "kube-apiserver", c.apiserverArgs...)
	if err != nil {
		return fmt.Errorf("cluster %q: start the API server: %w", c.Name, err)
	}
	c.mu.Lock()
	c.apiserver = p
	c.mu.Unlock()
	if err := c.waitReady(ctx); err != nil {
		return fmt.Errorf("cluster %q: %w", c.Name, err)
	}
	return nil
}

func (c *Cluster) processes() []*proc.Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*proc.Process(nil), c.procs...)
}

// Stop ends every process the cluster started, all at once, within a few seconds, and removes
// the cluster's directory if Start created it. It is safe to call more than once.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	procs := c.procs
	c.procs = nil
	c.stopped = true
	c.mu.Unlock()

	errs := make([]error, len(procs))
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.Stop(time.Second)
		}()
	}
	wg.Wait()
	err := errors.Join(errs...)
	if err == nil && c.ownDir {
		err = os.RemoveAll(c.Dir)
	}
	return err
}

// LogTail returns the last n lines of each component's log, for a failing test to print.
func (c *Cluster) LogTail(n int) string {
	var b strings.Builder
	for _, name := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "etcd"} {
		fmt.Fprintf(&b, "==> %s <==\n%s\n", name, proc.Tail(c.path(name+".log"), n))
	}
	return b.String()
}

// UserConfig returns a rest.Config that authenticates as user, a member of groups, with a
// client certificate signed by the cluster's CA. The user has no rights until RBAC grants some.
func (c *Cluster) UserConfig(user string, groups ...string) (*rest.Config, error) {
	return c.userConfig(user, groups)
}

func (c *Cluster) userConfig(user string, groups []string) (*rest.Config, error) {
	certPEM, keyPEM, err := c.ca.client(user, groups)
	if err != nil {
		return nil, err
	}
	return &rest.Config{
		Host:            c.host,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.ca.certPEM, CertData: certPEM, KeyData: keyPEM},
		QPS:             200,
		Burst:           400,
	}, nil
}

func (c *Cluster) path(name string) string { return filepath.Join(c.Dir, name) }

// WriteKubeconfig writes a kubeconfig file for cfg, whose context and cluster are named name.
// cfg must carry its credentials as data, as the configs from this package do.
func WriteKubeconfig(path, name string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters[name] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken,
		Impersonate: cfg.Impersonate.UserName, ImpersonateGroups: cfg.Impersonate.Groups,
	}
	kc.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name, Namespace: "default"}
	kc.CurrentContext = name
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return clientcmd.WriteToFile(*kc, path)
}
