// Command demo is `make demo`: ebb's main job on the embedded local clusters. It starts the
// "dev" and "prod" clusters, makes a local Git repository from examples/rolling-upgrade, runs
// the ebb daemon against it, and then tells the story, printing the executions table after
// each step:
//
//  1. a commit with a good tag: the execution ends COMPLETED in dev and prod;
//  2. a commit with a tag containing "broken": dev fails verification, the execution goes
//     ROLLING_BACK, the rollback execution restores the known-good release and the execution
//     ends ROLLBACK_COMPLETED; prod is never touched;
//  3. `git revert` of the broken commit: recorded as a redeploy of the verified release.
//
// It then leaves everything running for the user to explore, until Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/gitserver"
	"ebb.dev/ebb/internal/proc"
	"ebb.dev/ebb/internal/testcluster"
	"ebb.dev/ebb/reconciler"
)

const (
	pipeline     = "rolling-upgrade-example"
	namespace    = "ebb-system"
	pipelineFile = "pipelines/web.yaml"
)

func main() { os.Exit(run()) }

func run() int {
	dir := flag.String("dir", ".cache/demo", "directory for the clusters, the Git repository and the daemon's log")
	ebb := flag.String("ebb", "bin/ebb", "the ebb binary (make build)")
	exit := flag.Bool("exit", false, "exit after the story instead of waiting for Ctrl-C (for tests)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d := &demo{}
	defer d.close()
	if err := d.setUp(ctx, *dir, *ebb); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	if err := d.story(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		fmt.Fprintf(os.Stderr, "the daemon's log is %s\n", d.logPath)
		return 1
	}
	d.explore()
	if !*exit {
		fmt.Println("\nPress Ctrl-C to stop the daemon and both clusters.")
		<-ctx.Done()
		fmt.Println("\nstopping the daemon and both clusters")
	}
	return 0
}

type demo struct {
	dir, ebb, root string
	dev, prod      *testcluster.Cluster
	repo           *gitserver.WorkTree
	git            *gitserver.Server
	daemon         *proc.Process
	logPath        string
	store          *reconciler.Store
	devCS, prodCS  kubernetes.Interface
}

// setUp starts both clusters, installs ebb's CRDs, writes the daemon config and the Git
// repository, and starts the daemon.
func (d *demo) setUp(ctx context.Context, dir, ebb string) error {
	var err error
	if d.root, err = testcluster.ModuleRoot(); err != nil {
		return err
	}
	if d.dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	if d.ebb, err = filepath.Abs(ebb); err != nil {
		return err
	}
	if _, err := os.Stat(d.ebb); err != nil {
		return fmt.Errorf("%s is missing; run `make build`", ebb)
	}
	if err := os.RemoveAll(d.dir); err != nil {
		return err
	}
	step("Starting two local clusters, dev and prod (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
	if d.dev, err = testcluster.Start(ctx, testcluster.Options{Name: "dev", Dir: filepath.Join(d.dir, "dev"), Nodes: 2}); err != nil {
		return err
	}
	if d.prod, err = testcluster.Start(ctx, testcluster.Options{Name: "prod", Dir: filepath.Join(d.dir, "prod"), Nodes: 2}); err != nil {
		return err
	}
	d.devCS = kubernetes.NewForConfigOrDie(d.dev.Config)
	d.prodCS = kubernetes.NewForConfigOrDie(d.prod.Config)
	dyn := dynamic.NewForConfigOrDie(d.dev.Config)
	// ebb runs "in" dev: its records live there, as a Helm install would put them.
	if err := reconciler.InstallCRDs(ctx, dyn, filepath.Join(d.root, "charts", "ebb", "crds")); err != nil {
		return err
	}
	if _, err := d.devCS.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	d.store = reconciler.NewStore(dyn, namespace)

	step("Making a Git repository from examples/rolling-upgrade, on a local Git server")
	// A served repository, as ebb follows in a cluster: ebb pushes its write-back commits to it.
	const gitUser, gitPassword = "ebb", "demo-pa55word"
	if d.git, err = gitserver.New(filepath.Join(d.dir, "git-server"), gitserver.Options{Username: gitUser, Password: gitPassword}); err != nil {
		return err
	}
	repoURL, err := d.git.CreateRepo("deploy")
	if err != nil {
		return err
	}
	if d.repo, err = gitserver.Clone(d.git.AuthURL("deploy", gitUser, gitPassword), filepath.Join(d.dir, "repo")); err != nil {
		return err
	}
	if err := os.CopyFS(d.repo.Dir, os.DirFS(filepath.Join(d.root, "examples", "rolling-upgrade"))); err != nil {
		return err
	}
	if _, err := d.commit("Add the rolling-upgrade example"); err != nil {
		return err
	}
	// The daemon reads its Git credentials from the environment, as the chart passes them.
	os.Setenv("EBB_GIT_USERNAME", gitUser)
	os.Setenv("EBB_GIT_PASSWORD", gitPassword)
	config := fmt.Sprintf(`apiVersion: ebb.dev/v1alpha1
kind: Config
clusters:
- name: dev
  kubeconfig: %s
- name: prod
  kubeconfig: %s
`, d.dev.Kubeconfig, d.prod.Kubeconfig)
	configPath := filepath.Join(d.dir, "ebb-config.yaml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		return err
	}

	step("Starting the ebb daemon")
	port, err := proc.FreePort()
	if err != nil {
		return err
	}
	d.daemon, err = proc.Start(d.dir, "ebb", d.ebb, "run",
		"--repo", repoURL, "--branch", "main", "--config", configPath,
		"--kubeconfig", d.dev.Kubeconfig, "--namespace", namespace,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--interval", "1s", "--resync", "10s",
		"--cache-dir", filepath.Join(d.dir, "git-cache"), "--leader-elect=false", "--dashboard")
	if err != nil {
		return err
	}
	d.logPath = d.daemon.Log()
	fmt.Printf("   ebb run --repo %s --config %s   (log: %s, metrics: http://127.0.0.1:%d/metrics)\n", repoURL, configPath, d.logPath, port)
	fmt.Printf("   open the dashboard to watch the story live: http://127.0.0.1:%d/\n", port)
	return nil
}

// story commits a good tag, a broken tag, and a revert, waiting after each for the outcome.
func (d *demo) story(ctx context.Context) error {
	step("1. Commit a good release: tag 1.5.0")
	good, err := d.setTag("1.5.0", "Release web 1.5.0")
	if err != nil {
		return err
	}
	if _, err := d.waitFor(ctx, good, reconciler.Completed); err != nil {
		return err
	}
	d.table()

	step("2. Commit a broken release: tag 1.6.0-broken (its pods crash-loop)")
	bad, err := d.setTag("1.6.0-broken", "Release web 1.6.0-broken")
	if err != nil {
		return err
	}
	fmt.Println("   waiting for dev's verification to fail and the rollback to finish...")
	x, err := d.waitFor(ctx, bad, reconciler.RollbackCompleted)
	if err != nil {
		return err
	}
	d.table()
	fmt.Printf("\n   dev runs %s again; prod still runs %s and was never touched.\n", d.image(ctx, d.devCS, "web-dev"), d.image(ctx, d.prodCS, "web"))
	fmt.Printf("   %s: %s\n", x.Spec.DisplayName, x.Status.Comment)

	step("3. Poll again: the broken commit is quarantined, nothing is re-applied")
	before, _ := d.store.ListExecutions(ctx, pipeline)
	time.Sleep(6 * time.Second)
	after, _ := d.store.ListExecutions(ctx, pipeline)
	fmt.Printf("   executions before and after a poll: %d and %d\n", len(before), len(after))

	step("4. git revert the broken commit: the verified release is redeployed")
	if _, err := d.repo.Revert(bad); err != nil {
		return err
	}
	if err := d.repo.Push(); err != nil {
		return err
	}
	revert, _ := d.repo.Head()
	x, err = d.waitFor(ctx, revert, reconciler.Completed)
	if err != nil {
		return err
	}
	d.table()
	fmt.Printf("\n   %s: %s\n", x.Spec.DisplayName, x.Status.Comment)
	return d.writeBack(ctx)
}

// writeBack turns on write-back and commits another broken release: after the rollback, ebb
// pushes a commit that restores the pipeline's files, so Git says again what runs.
func (d *demo) writeBack(ctx context.Context) error {
	step("5. Turn on write-back (spec.writeBack.mode: commit) and commit another broken release: 1.7.0-broken")
	path := filepath.Join(d.repo.Dir, pipelineFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(data), "\nspec:\n", "\nspec:\n  writeBack: {mode: commit}\n", 1)), 0o644); err != nil {
		return err
	}
	if _, err := d.commit("Write rollbacks back to Git"); err != nil {
		return err
	}
	bad, err := d.setTag("1.7.0-broken", "Release web 1.7.0-broken")
	if err != nil {
		return err
	}
	if _, err := d.waitFor(ctx, bad, reconciler.RollbackCompleted); err != nil {
		return err
	}
	fmt.Println("   waiting for ebb to push its write-back commit...")
	deadline := time.Now().Add(time.Minute)
	for {
		list, _ := d.store.ListExecutions(ctx, pipeline)
		var x *reconciler.Execution
		for i := range list {
			if list[i].Spec.Commit == bad && list[i].Spec.Kind == reconciler.KindDeploy {
				x = &list[i]
			}
		}
		if x != nil && x.Annotations["writeback.ebb.dev/result"] != "" {
			fmt.Printf("   %s: %s\n", x.Spec.DisplayName, x.Status.Comment)
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no write-back of commit %s within a minute", short(bad))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := d.repo.Git("pull", "--ff-only", "--quiet"); err != nil {
		return err
	}
	log, err := d.repo.Git("log", "--format=%h %s", "-4")
	if err != nil {
		return err
	}
	fmt.Println("\n   git log: ebb's commit restores the pipeline's files")
	for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
		fmt.Println("     " + l)
	}
	// The daemon polls its own commit: in sync with the restored release, it runs nothing.
	before, _ := d.store.ListExecutions(ctx, pipeline)
	time.Sleep(5 * time.Second)
	after, _ := d.store.ListExecutions(ctx, pipeline)
	fmt.Printf("   executions before and after ebb polled its own commit: %d and %d\n", len(before), len(after))
	return nil
}

// commit commits the work tree and pushes it to the Git server.
func (d *demo) commit(message string) (string, error) {
	sha, err := d.repo.Commit(message)
	if err != nil {
		return "", err
	}
	return sha, d.repo.Push()
}

func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}

// setTag commits the pipeline with a new input tag.
func (d *demo) setTag(tag, message string) (string, error) {
	path := filepath.Join(d.repo.Dir, pipelineFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	lines := strings.Split(string(data), "\n")
	found := false
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "tag:") {
			lines[i] = l[:strings.Index(l, "tag:")] + fmt.Sprintf("tag: %q", tag)
			found = true
			break
		}
	}
	if !found {
		return "", fmt.Errorf("%s has no tag field", pipelineFile)
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		return "", err
	}
	return d.commit(message)
}

// waitFor waits for the Deploy execution of commit to reach status, printing each status it
// passes through.
func (d *demo) waitFor(ctx context.Context, commit string, status reconciler.Status) (*reconciler.Execution, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	go func() { // a daemon that dies ends the wait at once
		select {
		case <-d.daemon.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	var (
		found  *reconciler.Execution
		failed error
		last   reconciler.Status
	)
	err := d.store.WatchExecutions(ctx, pipeline, func(x *reconciler.Execution) bool {
		if x.Spec.Kind != reconciler.KindDeploy || x.Spec.Commit != commit || x.Status.Phase == last {
			return false
		}
		last = x.Status.Phase
		fmt.Printf("   %s: %s\n", x.Spec.DisplayName, x.Status.Phase)
		switch {
		case x.Status.Phase == status:
			found = x
		case x.Status.Phase.Terminal():
			failed = fmt.Errorf("%s ended %s, not %s: %s", x.Spec.DisplayName, x.Status.Phase, status, x.Status.Comment)
		}
		return found != nil || failed != nil
	})
	switch {
	case found != nil:
		return found, nil
	case failed != nil:
		return nil, failed
	case d.daemon.Exited() != nil:
		return nil, d.daemon.Exited()
	case err != nil && ctx.Err() == context.DeadlineExceeded:
		return nil, fmt.Errorf("commit %s: no execution reached %s within 3 minutes", commit[:7], status)
	}
	return nil, err
}

// table prints the executions table with `ebb executions`, as a user would.
func (d *demo) table() {
	fmt.Println()
	cmd := exec.Command(d.ebb, "executions", "--kubeconfig", d.dev.Kubeconfig, "-n", namespace)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	_ = cmd.Run()
}

func (d *demo) image(ctx context.Context, cs kubernetes.Interface, ns string) string {
	dep, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		return "(no Deployment web in " + ns + ")"
	}
	return dep.Spec.Template.Spec.Containers[0].Image
}

// explore prints the commands to look around.
func (d *demo) explore() {
	kubectl, _ := testcluster.Bin("kubectl")
	rel := func(p string) string {
		if r, err := filepath.Rel(d.root, p); err == nil {
			return r
		}
		return p
	}
	step("Explore what ebb did")
	fmt.Printf(`   %[1]s pipelines --kubeconfig %[2]s -n %[3]s
   %[1]s executions --kubeconfig %[2]s -n %[3]s -o wide
   %[1]s execution %[4]s#2 --kubeconfig %[2]s -n %[3]s
   %[1]s execution %[4]s_dev_rollback#1 --kubeconfig %[2]s -n %[3]s
   %[1]s dashboard --kubeconfig %[2]s -n %[3]s
   %[5]s --kubeconfig %[2]s get pipelines,executions,stageledgers -n %[3]s
   %[5]s --kubeconfig %[2]s get events -n %[3]s
   %[5]s --kubeconfig %[2]s get deploy,pods -n web-dev -o wide
   git -C %[6]s log --oneline
   tail -f %[7]s
`, rel(d.ebb), rel(d.dev.Kubeconfig), namespace, pipeline, rel(kubectl), rel(d.repo.Dir), rel(d.logPath))
}

// close stops the daemon (SIGTERM, as Kubernetes would) and both clusters.
func (d *demo) close() {
	if d.daemon != nil {
		_ = d.daemon.Stop(5 * time.Second)
	}
	if d.git != nil {
		_ = d.git.Close()
	}
	for _, c := range []*testcluster.Cluster{d.prod, d.dev} {
		if c != nil {
			_ = c.Stop()
		}
	}
}

func step(s string) { fmt.Printf("\n==> %s\n", s) }
