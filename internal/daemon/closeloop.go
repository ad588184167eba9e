package daemon

import (
	"context"
	"fmt"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/internal/notify"
	"ebb.dev/ebb/internal/writeback"
	"ebb.dev/ebb/planner"
)

// closeLoop follows the execution records of the pipelines owns accepts (nil: all) while this
// replica acts for them, with one watch: it notifies the receivers of the daemon config, and
// writes completed rollbacks back to Git for pipelines with spec.writeBack. It never stops the
// daemon: a failure is logged.
func (d *Daemon) closeLoop(ctx context.Context, owns func(string) bool) {
	log := d.log.With("component", "notify")
	records, err := dynamic.NewForConfig(d.opts.Home)
	if err != nil {
		log.Error("no notifications or write-back", "err", err)
		return
	}
	home, err := kubernetes.NewForConfig(d.opts.Home)
	if err != nil {
		log.Error("no notifications or write-back", "err", err)
		return
	}
	conf := d.opts.Config
	if conf == nil {
		conf = &config.Config{}
	}
	w := writeback.New(writeback.Options{
		Remote: d.source.Remote(), Branch: d.opts.Source.Branch, Path: d.opts.Source.Path,
		Author: conf.WriteBack.CommitAuthor(), Pipeline: d.pipelineAt,
		Namespace: d.opts.Namespace, Records: records, Events: home, Logger: d.log,
	})
	onExecution := w.Offer
	if d.opts.Source.Branch == "" {
		onExecution = nil // a source pinned to a tag has no branch to write to
	}
	n, err := notify.New(notify.Options{
		Namespace: d.opts.Namespace, Records: records, Home: home, Receivers: conf.Notifications,
		OnExecution: onExecution, Owns: owns, Logger: d.log, Registerer: d.reg,
	})
	if err != nil {
		log.Error("no notifications or write-back", "err", err)
		return
	}
	go w.Run(ctx)
	if err := n.Run(ctx); err != nil && ctx.Err() == nil {
		log.Error("notifications and write-back stopped", "err", err)
	}
}

// pipelineAt returns a pipeline as defined at commit.
func (d *Daemon) pipelineAt(ctx context.Context, commit, name string) (*planner.Pipeline, error) {
	snap, err := d.source.SnapshotAt(ctx, commit)
	if err != nil {
		return nil, err
	}
	pipelines, loadErr := planner.Load(planner.NewRepo(snap.FS), plannerOptions(d.opts.Config))
	for _, p := range pipelines {
		if p.Metadata.Name == name {
			return p, nil
		}
	}
	if loadErr != nil {
		return nil, fmt.Errorf("pipeline %q at commit %s: %w", name, commit, loadErr)
	}
	return nil, fmt.Errorf("commit %s has no pipeline %q", commit, name)
}
