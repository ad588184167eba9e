package daemon

import (
	"context"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"ebb.dev/ebb/internal/notify"
)

// closeLoop follows the execution records while this replica leads: it notifies the
// receivers of the daemon config. It never stops the daemon: a failure is logged.
func (d *Daemon) closeLoop(ctx context.Context) {
	log := d.log.With("component", "notify")
	records, err := dynamic.NewForConfig(d.opts.Home)
	if err != nil {
		log.Error("no notifications", "err", err)
		return
	}
	home, err := kubernetes.NewForConfig(d.opts.Home)
	if err != nil {
		log.Error("no notifications", "err", err)
		return
	}
	if d.opts.Config == nil || len(d.opts.Config.Notifications) == 0 {
		return
	}
	receivers := d.opts.Config.Notifications
	n, err := notify.New(notify.Options{
		Namespace: d.opts.Namespace, Records: records, Home: home, Receivers: receivers,
		Logger: d.log, Registerer: d.reg,
	})
	if err == nil {
		err = n.Run(ctx)
	}
	if err != nil && ctx.Err() == nil {
		log.Error("notifications stopped", "err", err)
	}
}
