package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/reconciler"
)

// retireGrace is how long the clients built from a rotated kubeconfig keep their watches
// after the rotation. Work that started before it holds those clients: while the old
// credentials still work (a rotation usually overlaps them) its rollout watch keeps it moving;
// once they are refused, its requests fail as unauthorized or forbidden, which the reconciler
// waits out and retries with the new clients.
const retireGrace = 5 * time.Minute

// clusters resolves the daemon config's cluster names to clients, lazily: a cluster whose
// kubeconfig Secret cannot be read yet fails the stages that use it, with the reason, and is
// tried again on the next execution. Nothing else is affected.
//
// Kubeconfig Secrets are watched (watch, one informer per Secret, selected by name so that
// ebb needs no right on any other Secret). When the kubeconfig a cluster's clients were built
// from changes, they are dropped: the next request to that cluster builds new ones from the
// Secret as it is now.
type clusters struct {
	cfg    *config.Config
	home   *rest.Config
	homeCS kubernetes.Interface
	kube   *kubeRequests
	log    *slog.Logger
	// qps and burst limit each cluster's client (Options.KubeQPS, KubeBurst).
	qps   float32
	burst int

	mu       sync.Mutex
	resolved map[string]*resolvedCluster
	secrets  map[secretRef]*secretWatch
}

// resolvedCluster is a cluster's clients and the kubeconfig they were built from.
type resolvedCluster struct {
	cluster *reconciler.Cluster
	// kubeconfig is a digest of the Secret's kubeconfig; "" for clusters not reached
	// through a Secret.
	kubeconfig string
}

// secretRef names one watched Secret.
type secretRef struct{ namespace, name string }

func (r secretRef) String() string { return r.namespace + "/" + r.name }

// secretWatch is the informer of one Secret.
type secretWatch struct {
	lister corelisters.SecretLister
	synced cache.InformerSynced
}

func newClusters(cfg *config.Config, home *rest.Config, homeCS kubernetes.Interface, kube *kubeRequests, log *slog.Logger) *clusters {
	return &clusters{cfg: cfg, home: home, homeCS: homeCS, kube: kube, log: log.With("component", "clusters"),
		resolved: map[string]*resolvedCluster{}, secrets: map[secretRef]*secretWatch{}}
}

// get returns the clients of cluster name.
func (c *clusters) get(name string) (*reconciler.Cluster, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.resolved[name]; r != nil {
		return r.cluster, nil
	}
	entry := c.cfg.Cluster(name)
	if entry == nil {
		return nil, &reconciler.UnknownClusterError{Name: name}
	}
	restCfg, digest, err := c.restConfig(entry)
	if err != nil {
		return nil, err
	}
	if c.qps > 0 {
		restCfg.QPS, restCfg.Burst = c.qps, c.burst
	}
	cl, err := reconciler.NewCluster(name, c.kube.instrument(restCfg, name))
	if err != nil {
		return nil, err
	}
	c.resolved[name] = &resolvedCluster{cluster: cl, kubeconfig: digest}
	return cl, nil
}

// restConfig reaches a cluster, and returns the digest of the kubeconfig Secret it read.
// "inCluster" means the cluster ebb runs in, which is Home: the same whether ebb runs in a
// pod or, for tests and the demo, outside with a kubeconfig.
func (c *clusters) restConfig(e *config.Cluster) (*rest.Config, string, error) {
	if e.InCluster {
		return rest.CopyConfig(c.home), "", nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if e.KubeconfigSecret == nil {
		cfg, err := e.RESTConfig(ctx, c.homeCS)
		return cfg, "", err
	}
	secret, err := c.secret(ctx, e)
	if err != nil {
		return nil, "", err
	}
	cfg, err := e.SecretRESTConfig(secret)
	if err != nil {
		return nil, "", err
	}
	return cfg, kubeconfigDigest(secret, e.KubeconfigSecret.Key), nil
}

// secret returns the kubeconfig Secret of cluster e: as its watch last saw it, or read now
// while the watch has not listed it yet. The caller holds c.mu.
func (c *clusters) secret(ctx context.Context, e *config.Cluster) (*corev1.Secret, error) {
	ref := e.KubeconfigSecret
	if w := c.secrets[secretRef{ref.Namespace, ref.Name}]; w != nil && w.synced() {
		s, err := w.lister.Secrets(ref.Namespace).Get(ref.Name)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: read kubeconfig Secret %s/%s: %w", e.Name, ref.Namespace, ref.Name, err)
		}
		return s, nil
	}
	s, err := c.homeCS.CoreV1().Secrets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("cluster %q: read kubeconfig Secret %s/%s: %w", e.Name, ref.Namespace, ref.Name, err)
	}
	return s, nil
}

// kubeconfigDigest identifies the kubeconfig under key of s without holding it; "absent"
// when there is none.
func kubeconfigDigest(s *corev1.Secret, key string) string {
	data, ok := s.Data[key]
	if !ok {
		return "absent"
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// watch follows every kubeconfig Secret the config names until ctx is done. A Secret that
// cannot be watched (ebb may only get it) is still read when a cluster's clients are built;
// a rotation of it then needs a restart, which the log says.
func (c *clusters) watch(ctx context.Context) {
	if c.cfg == nil {
		return
	}
	for _, e := range c.cfg.Clusters {
		if e.KubeconfigSecret == nil {
			continue
		}
		ref := secretRef{e.KubeconfigSecret.Namespace, e.KubeconfigSecret.Name}
		c.mu.Lock()
		watched := c.secrets[ref] != nil
		c.mu.Unlock()
		if watched {
			continue
		}
		factory := informers.NewSharedInformerFactoryWithOptions(c.homeCS, 0, informers.WithNamespace(ref.namespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", ref.name).String()
			}))
		inf := factory.Core().V1().Secrets()
		var warned atomic.Bool // the watch retries with a back-off: warn once, then at debug
		_ = inf.Informer().SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			level := slog.LevelDebug
			if !warned.Swap(true) {
				level = slog.LevelWarn
			}
			c.log.Log(ctx, level, "cannot watch kubeconfig Secret; a rotation of it is not seen until it can (ebb needs get, list and watch on it)",
				"secret", ref.String(), "err", err)
		})
		_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { c.changed(ctx, ref, obj) },
			UpdateFunc: func(_, obj any) { c.changed(ctx, ref, obj) },
			DeleteFunc: func(any) { c.changed(ctx, ref, nil) },
		})
		c.mu.Lock()
		c.secrets[ref] = &secretWatch{lister: inf.Lister(), synced: inf.Informer().HasSynced}
		c.mu.Unlock()
		factory.Start(ctx.Done())
	}
	<-ctx.Done()
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.secrets)
}

// changed drops the clients of every cluster whose kubeconfig Secret ref no longer holds the
// kubeconfig they were built from (obj is the Secret as it is now, nil once deleted), logs
// the rotation without the secret, and records an Event on the Secret.
func (c *clusters) changed(ctx context.Context, ref secretRef, obj any) {
	secret, _ := obj.(*corev1.Secret)
	c.mu.Lock()
	var rotated []string
	for _, e := range c.cfg.Clusters {
		k := e.KubeconfigSecret
		if k == nil || k.Namespace != ref.namespace || k.Name != ref.name {
			continue
		}
		r := c.resolved[e.Name]
		if r == nil {
			continue // not built yet: the next request reads the Secret as it is
		}
		digest := "deleted"
		if secret != nil {
			digest = kubeconfigDigest(secret, k.Key)
		}
		if digest == r.kubeconfig {
			continue
		}
		delete(c.resolved, e.Name)
		old := r.cluster
		time.AfterFunc(retireGrace, old.Close)
		rotated = append(rotated, e.Name)
		c.log.Info("kubeconfig Secret changed; the next request to the cluster uses it",
			"cluster", e.Name, "secret", ref.String(), "key", k.Key, "deleted", secret == nil)
	}
	c.mu.Unlock()
	if len(rotated) > 0 && secret != nil {
		c.event(ctx, secret, rotated)
	}
}

// event records, on the Secret, that ebb uses it anew for clusters. It is best effort.
func (c *clusters) event(ctx context.Context, s *corev1.Secret, clusters []string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: s.Name + ".", Namespace: s.Namespace},
		InvolvedObject: corev1.ObjectReference{
			APIVersion: "v1", Kind: "Secret", Namespace: s.Namespace, Name: s.Name, UID: s.UID,
			ResourceVersion: s.ResourceVersion,
		},
		Type: corev1.EventTypeNormal, Reason: "KubeconfigRotated",
		Message: fmt.Sprintf("ebb builds new clients of cluster(s) %v from this Secret: the next request to them uses it", clusters),
		Source:  corev1.EventSource{Component: "ebb"}, FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "ebb.dev/daemon", ReportingInstance: "ebb",
	}
	if _, err := c.homeCS.CoreV1().Events(s.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		c.log.Debug("record event", "secret", s.Namespace+"/"+s.Name, "reason", ev.Reason, "err", err)
	}
}
