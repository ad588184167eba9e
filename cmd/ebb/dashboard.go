package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"ebb.dev/ebb/internal/approvals"
	"ebb.dev/ebb/internal/dashboard"
)

// dashboardFlags are the flags of `ebb dashboard`.
type dashboardFlags struct {
	listen, kubeconfig, context, namespace string
}

func newDashboardCommand() *cobra.Command {
	var f dashboardFlags
	cmd := &cobra.Command{
		Use:   "dashboard [--listen 127.0.0.1:8090] [--kubeconfig F] [--context C] [-n NAMESPACE]",
		Short: "Serve the Executions page locally, reading and approving as your Kubernetes user",
		Long: `Serve the Executions page on a local address: every execution, live; one execution's
stages and tasks; one pipeline's releases, errors and DORA figures; Approve and Reject on a
waiting stage. Everything goes through the Kubernetes API with your kubeconfig, so your RBAC
decides what you see, and the API server's approval policy whether you may approve.`,
		Example: `  ebb dashboard
  ebb dashboard --context prod-admin -n ebb-system --listen 127.0.0.1:9000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return serveDashboard(cmd, f) },
	}
	cmd.Flags().StringVar(&f.listen, "listen", "127.0.0.1:8090", "address to serve the page on")
	cmd.Flags().StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig of the cluster ebb runs in (default: $KUBECONFIG or ~/.kube/config)")
	cmd.Flags().StringVar(&f.context, "context", "", "kubeconfig context to use (default: the current one)")
	cmd.Flags().StringVarP(&f.namespace, "namespace", "n", "ebb-system", "namespace of the execution records")
	return cmd
}

// serveDashboard watches the records as the user, serves the page until interrupted, then
// shuts the server down.
func serveDashboard(cmd *cobra.Command, f dashboardFlags) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg, err := contextConfig(f.kubeconfig, f.context)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	who, err := approvals.WhoAmI(ctx, cs)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv, err := dashboard.New(dashboard.Options{Client: dyn, Kube: cs, Namespace: f.namespace, Logger: logger})
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	l, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.listen, err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "ebb dashboard: http://%s/ (namespace %s, as %s); Ctrl-C stops it\n", l.Addr(), f.namespace, who)
	hs := &http.Server{Handler: loopbackHosts(l.Addr(), srv), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	done := make(chan error, 1)
	go func() { done <- hs.Serve(l) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Event streams never end by themselves: close them rather than wait.
	if err := hs.Shutdown(shutdown); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	_ = hs.Close()
	return nil
}

// loopbackHosts refuses, on a loopback address, requests that name another host: a page on
// another site that rebinds its name to 127.0.0.1 (DNS rebinding) would otherwise read the
// dashboard, and act, with the user's Kubernetes credentials.
func loopbackHosts(addr net.Addr, h http.Handler) http.Handler {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || !tcp.IP.IsLoopback() {
		return h
	}
	port := strconv.Itoa(tcp.Port)
	allowed := map[string]bool{}
	for _, host := range []string{"127.0.0.1", "localhost", "[::1]", tcp.IP.String()} {
		allowed[host+":"+port] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowed[strings.ToLower(r.Host)] {
			http.Error(w, fmt.Sprintf("ebb dashboard serves http://127.0.0.1:%s/ only, not host %q", port, r.Host), http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// contextConfig loads a kubeconfig file, or $KUBECONFIG and ~/.kube/config, with context
// kubeContext when given, in kubectl's order.
func contextConfig(kubeconfig, kubeContext string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeContext}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	return cfg, nil
}
