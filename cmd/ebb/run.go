package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"ebb.dev/ebb/gitsource"
	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/internal/daemon"
	"ebb.dev/ebb/internal/redact"
	"ebb.dev/ebb/reconciler"
)

// runFlags are the flags of `ebb run`.
type runFlags struct {
	repo, branch, tag, path string
	interval, resync        time.Duration
	retryBackoff            time.Duration
	kubeQPS                 float32
	kubeBurst               int
	pprof                   bool
	maxConcurrent           int
	configFile, listen      string
	kube                    recordFlags
	cacheDir, credsDir      string
	webhookSecretFile       string
	leaderElect             bool
	shards                  int
	identity, logLevel      string
	dashboard               bool
}

func newRunCommand() *cobra.Command {
	f := runFlags{}
	cmd := &cobra.Command{
		Use:   "run --repo URL --config FILE",
		Short: "Run the reconciler daemon",
		Long: `Run the reconciler: follow a Git repository, plan every enabled pipeline at each new commit,
roll each stage's release out, verify it, and roll a failed stage back to its last known-good
release. Logs are JSON on standard error. SIGTERM parks the running execution at a task
boundary; the next leader continues it.

Git credentials come from --git-credentials-dir (a mounted Secret with username, password,
bearerToken, identity, known_hosts) or from EBB_GIT_* environment variables. The webhook
secret comes from --webhook-secret-file or EBB_WEBHOOK_SECRET.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd.Context(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.repo, "repo", "", "Git repository URL (https://, ssh://, file://) or local path")
	fl.StringVar(&f.branch, "branch", "main", "branch to follow")
	fl.StringVar(&f.tag, "tag", "", "tag to follow instead of a branch")
	fl.StringVar(&f.path, "path", "", "directory inside the repository that holds the pipelines and manifests")
	fl.DurationVar(&f.interval, "interval", 30*time.Second, "time between polls when no webhook or local watch triggers one")
	fl.DurationVar(&f.resync, "resync", time.Minute, "time between drift checks of every pipeline")
	fl.Float32Var(&f.kubeQPS, "kube-qps", daemon.DefaultKubeQPS, "requests a second each Kubernetes client may send (one per cluster, and one for the records), sustained")
	fl.IntVar(&f.kubeBurst, "kube-burst", daemon.DefaultKubeBurst, "requests each Kubernetes client may send in a burst above --kube-qps")
	fl.IntVar(&f.maxConcurrent, "max-concurrent-executions", reconciler.DefaultMaxConcurrent, "executions that may run at once; others wait for a free slot (executions waiting for an approval or a cluster take none)")
	fl.DurationVar(&f.retryBackoff, "retry-backoff", 30*time.Second, "first wait before trying again after a cluster could not answer (unreachable, overloaded, forbidden); it doubles with each attempt, up to 1h")
	fl.StringVar(&f.configFile, "config", "", "daemon config file naming the clusters stages deploy to")
	fl.StringVar(&f.listen, "listen", ":8080", "address serving /metrics, /healthz, /readyz and /webhook; empty to serve nothing")
	fl.BoolVar(&f.pprof, "pprof", false, "also serve Go's runtime profiles (heap, CPU, goroutines) under /debug/pprof/ on --listen")
	// kubectl's connection flags (--kubeconfig, --context, -n, --as, ...) for the cluster ebb
	// records executions in; default in-cluster, or $KUBECONFIG.
	f.kube.add(cmd)
	fl.Lookup("namespace").Usage = "namespace of the execution records and the Leases (default: $POD_NAMESPACE, else the kubeconfig context's namespace, else ebb-system)"
	fl.StringVar(&f.cacheDir, "cache-dir", filepath.Join(os.TempDir(), "ebb-cache"), "directory of the local Git clone")
	fl.StringVar(&f.credsDir, "git-credentials-dir", "", "directory of Git credential files (a mounted Secret)")
	fl.StringVar(&f.webhookSecretFile, "webhook-secret-file", "", "file holding the push webhook secret")
	fl.BoolVar(&f.leaderElect, "leader-elect", true, "share the pipelines between replicas through Leases (without it, this process acts for every pipeline)")
	fl.IntVar(&f.shards, "shards", 1, "shards the pipelines are split into, each acted for by one replica at a time (a Lease each); give every replica the same number")
	fl.BoolVar(&f.dashboard, "dashboard", false, "also serve the Executions page, read-only, on --listen (approvals are never possible there)")
	fl.StringVar(&f.identity, "identity", "", "this replica's name in the Leases (default: host name)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	_ = cmd.MarkFlagRequired("repo")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func runDaemon(ctx context.Context, f runFlags) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return usageErrorf("--log-level: %v", err)
	}
	if f.shards < 1 || f.shards > 1000 {
		return usageErrorf("--shards: %d is not between 1 and 1000", f.shards)
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// client-go logs through klog (leader election, watches, throttling): into the same JSON.
	daemon.RouteKlog(logger)

	cfg, err := config.Load(f.configFile)
	if err != nil {
		return err
	}
	home, err := f.kube.restConfig()
	if err != nil {
		return err
	}
	src := gitsource.DefaultOptions()
	src.URL, src.Branch, src.Tag, src.Path, src.CacheDir, src.Interval = f.repo, f.branch, f.tag, f.path, f.cacheDir, f.interval
	if f.tag != "" {
		src.Branch = ""
	}
	if f.credsDir != "" {
		// Read by the source, and again whenever the mounted Secret changes.
		src.CredentialsDir = f.credsDir
	} else if src.Credentials, err = gitsource.CredentialsFromEnv(os.Getenv); err != nil {
		return err
	}
	secret, err := webhookSecret(f.webhookSecretFile)
	if err != nil {
		return err
	}
	ns := *f.kube.kube.Namespace
	if ns == "" {
		ns = os.Getenv("POD_NAMESPACE")
	}
	if ns == "" {
		ns = f.kube.namespace // the context's, else ebb-system
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger.Info("starting", "repo", redact.URL(f.repo), "branch", src.Branch, "tag", src.Tag, "path", f.path, "namespace", ns)
	err = daemon.Run(ctx, daemon.Options{
		Source: src, Config: cfg, Home: home, Namespace: ns, Listen: f.listen,
		WebhookSecret: secret, Resync: f.resync, RetryBackoff: f.retryBackoff,
		KubeQPS: f.kubeQPS, KubeBurst: f.kubeBurst, MaxConcurrent: f.maxConcurrent,
		LeaderElection: f.leaderElect, Shards: f.shards, Identity: f.identity,
		Dashboard: f.dashboard, Profiling: f.pprof,
		Logger: logger,
	})
	if err != nil {
		logger.Error("stopped", "err", err)
		return errSilent
	}
	logger.Info("stopped")
	return nil
}

// webhookSecret reads the webhook secret from file, or EBB_WEBHOOK_SECRET.
func webhookSecret(file string) ([]byte, error) {
	if file == "" {
		return []byte(os.Getenv("EBB_WEBHOOK_SECRET")), nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read webhook secret: %w", errors.Unwrap(err))
	}
	return []byte(strings.TrimSpace(string(data))), nil
}
