package daemon

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Sharding. The pipelines are split into Options.Shards shards by a hash of their names, and
// each shard has a Lease: the replica that holds a shard's Lease is the only one that acts
// for its pipelines (executions, ledgers, Pipeline objects, notifications). A replica that
// stops renewing loses its shards when their Leases expire, and the others take them over and
// continue the executions in flight from their records.
//
// Replicas share the shards out evenly: each keeps a member Lease of its own, renewed like a
// heartbeat, and takes shards while it holds fewer than its fair share (the shards divided by
// the live members, rounded up), and hands one back when it holds more. The member Leases
// only balance the load; which replica acts is decided by the shard Leases alone, with
// client-go's leader election renewing them. A replica that receives a push webhook says so
// on its member Lease, and the others, which watch the Leases, poll Git at once too: the
// push may be for pipelines they act for.
const (
	leaseDuration = 15 * time.Second
	renewDeadline = 10 * time.Second
	retryPeriod   = 2 * time.Second

	// LeaderLease is the Lease of the only shard when there is one (the name older versions
	// used for their leader).
	LeaderLease = "ebb-leader"
	// labelLease marks ebb's Leases: "shard" or "member"; labelShards gives a shard Lease's
	// shard count.
	labelLease  = "ebb.dev/lease"
	labelShards = "ebb.dev/shards"
	memberLease = "ebb-member-"
	// annotationPushed, on a member Lease, is when its replica last received a push webhook.
	annotationPushed = "ebb.dev/push-received-at"
)

// ShardOf returns the shard, of shards, that pipeline belongs to.
func ShardOf(pipeline string, shards int) int {
	if shards <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(pipeline))
	return int(h.Sum32() % uint32(shards))
}

// ShardLease names the Lease of shard i of shards.
func ShardLease(i, shards int) string {
	if shards <= 1 {
		return LeaderLease
	}
	return fmt.Sprintf("ebb-shard-%d-of-%d", i, shards)
}

// shardCount returns the shard count a Lease of ebb's is for, and whether it is a shard
// Lease.
func shardCount(l *coordinationv1.Lease) (int, bool) {
	if l.Name == LeaderLease {
		return 1, true
	}
	if l.Labels[labelLease] != "shard" {
		return 0, false
	}
	n, err := strconv.Atoi(l.Labels[labelShards])
	return n, err == nil
}

var notNameChars = regexp.MustCompile(`[^a-z0-9.-]+`)

// memberLeaseName is the member Lease of the replica named id.
func memberLeaseName(id string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	part := strings.Trim(notNameChars.ReplaceAllString(strings.ToLower(id), "-"), "-.")
	switch {
	case part == "":
		part = fmt.Sprintf("%08x", h.Sum32())
	case len(memberLease+part) > 253:
		part = fmt.Sprintf("%s-%08x", strings.Trim(part[:230], "-."), h.Sum32())
	}
	return memberLease + part
}

// sharder keeps this replica's share of the shards, running act for each shard it holds
// until it loses or hands back the shard's Lease.
type sharder struct {
	shards    int
	id        string
	namespace string
	client    kubernetes.Interface
	log       *slog.Logger
	act       func(ctx context.Context, shard int)
	// onPush is called when another replica received a push webhook.
	onPush func()
	owned  *prometheus.GaugeVec
	leases cache.SharedIndexInformer
	pushed chan struct{} // this replica received a push: say so

	seenMu sync.Mutex
	// seen records, by Lease name, when this replica last saw the Lease change (its own
	// clock, as client-go's leader election does: the clocks of replicas need not agree).
	seen map[string]seenLease

	// ticks counts the ticks since the API server last failed to answer one: on the first,
	// this replica only looks, so that replicas started (or reconnected) together see each
	// other's member Leases before they take shards.
	ticks int
	// following is the holders this replica last said it follows (it holds no shard), and
	// waiting the Lease of another shard count it last said it waits for.
	following, waiting string

	mu      sync.Mutex
	holding map[int]*holding
}

type seenLease struct {
	version string
	at      time.Time
}

// holding is a shard this replica holds, or is handing back.
type holding struct {
	cancel   context.CancelFunc
	handBack bool // canceled to give the shard to another replica
	done     chan struct{}
}

func newSharder(shards int, id, namespace string, client kubernetes.Interface, reg prometheus.Registerer, log *slog.Logger, act func(context.Context, int), onPush func()) *sharder {
	owned := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ebb_shard_owned", Help: "1 for each shard this replica holds the Lease of and acts for.",
	}, []string{"shard"})
	if reg != nil {
		reg.MustRegister(owned)
	}
	s := &sharder{
		shards: max(shards, 1), id: id, namespace: namespace, client: client, act: act, onPush: onPush, owned: owned,
		log: log.With("component", "shards", "identity", id), seen: map[string]seenLease{}, holding: map[int]*holding{},
		pushed: make(chan struct{}, 1),
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace))
	s.leases = factory.Coordination().V1().Leases().Informer()
	_, _ = s.leases.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.observe(nil, obj) },
		UpdateFunc: s.observe,
	})
	return s
}

// observe notes when a Lease changed, and polls Git when another replica says it received a
// push.
func (s *sharder) observe(old, obj any) {
	l, ok := obj.(*coordinationv1.Lease)
	if !ok {
		return
	}
	s.seenMu.Lock()
	if seen, ok := s.seen[l.Name]; !ok || seen.version != l.ResourceVersion {
		s.seen[l.Name] = seenLease{version: l.ResourceVersion, at: time.Now()}
	}
	s.seenMu.Unlock()
	if o, ok := old.(*coordinationv1.Lease); ok && holder(l) != s.id && l.Labels[labelLease] == "member" &&
		l.Annotations[annotationPushed] != o.Annotations[annotationPushed] && s.onPush != nil {
		s.onPush()
	}
}

// Trigger is the push webhook's: it polls Git, and tells the other replicas to.
func (s *sharder) Trigger() {
	if s.onPush != nil {
		s.onPush()
	}
	select {
	case s.pushed <- struct{}{}:
	default:
	}
}

// run keeps the share until ctx ends, then hands every shard back (its executions parked at
// their task boundaries) so that the other replicas take them over at once.
func (s *sharder) run(ctx context.Context) {
	s.log.Info("sharing the pipelines' shards", "shards", s.shards)
	go s.leases.Run(ctx.Done())
	go s.announcePushes(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), s.leases.HasSynced) {
		return
	}
	t := time.NewTicker(retryPeriod)
	defer t.Stop()
	for {
		if err := s.tick(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("renew this replica's member Lease, or take a shard; trying again", "err", err)
		}
		select {
		case <-ctx.Done():
			s.stopAll()
			return
		case <-t.C:
		}
	}
}

// announcePushes records each push webhook this replica receives on its member Lease.
func (s *sharder) announcePushes(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.pushed:
		}
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, annotationPushed, time.Now().UTC().Format(time.RFC3339Nano))
		if _, err := s.client.CoordinationV1().Leases(s.namespace).Patch(ctx, memberLeaseName(s.id), types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil && ctx.Err() == nil {
			s.log.Warn("tell the other replicas of a push; they poll on their own", "err", err)
		}
	}
}

// tick renews this replica's member Lease, then takes or hands back shards to hold its fair
// share, from the Leases as the watch last saw them (or the API server, when the watch is
// behind). After a tick that could not reach the API server, the next one only looks, as the
// first does: the replicas come back together, and each must see the others' member Leases
// renewed before it takes its share, or the first back takes every shard.
func (s *sharder) tick(ctx context.Context) error {
	leases, err := s.view(ctx)
	if err == nil {
		err = s.renewMember(ctx, leases[memberLeaseName(s.id)])
	}
	if err != nil {
		s.ticks = 0
		return err
	}
	now := time.Now()
	members, foreign := 0, ""
	for _, l := range leases {
		live := s.live(l, now)
		switch n, isShard := shardCount(l); {
		case isShard && n != s.shards && live:
			foreign = l.Name
		case l.Labels[labelLease] == "member" && live:
			members++
		case l.Labels[labelLease] == "member" && now.Sub(s.seenAt(l.Name)) > 10*leaseDuration:
			// A replica that is gone: its member Lease would only be listed again and again.
			_ = s.client.CoordinationV1().Leases(s.namespace).Delete(ctx, l.Name, metav1.DeleteOptions{
				Preconditions: &metav1.Preconditions{ResourceVersion: &l.ResourceVersion},
			})
		}
	}
	fair := int(math.Ceil(float64(s.shards) / float64(max(members, 1))))
	if s.ticks++; s.ticks == 1 && s.shards > 1 {
		return nil
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	held := 0
	for i, h := range s.holding {
		l := leases[ShardLease(i, s.shards)]
		if !h.handBack && l != nil && holder(l) != s.id && s.live(l, now) {
			s.log.Warn("another replica holds the shard; stopping", "shard", i, "holder", holder(l))
			h.cancel()
		}
		if !h.handBack {
			held++
		}
	}
	if held > fair {
		s.handBackOne(fair)
		return nil
	}
	if foreign != "" {
		if foreign != s.waiting {
			s.log.Info("waiting for the replicas of another shard count to stop", "lease", foreign)
		}
		s.waiting = foreign
		return nil
	}
	s.waiting = ""
	defer func() {
		if held > 0 {
			s.following = ""
			return
		}
		var holders []string
		for i := range s.shards {
			if l := leases[ShardLease(i, s.shards)]; l != nil && s.live(l, now) {
				holders = append(holders, holder(l))
			}
		}
		sort.Strings(holders)
		if h := strings.Join(slices.Compact(holders), ","); h != "" && h != s.following {
			s.following = h
			s.log.Info("following", "holders", h)
		}
	}()
	for _, i := range s.preference() {
		if held >= fair {
			break
		}
		if s.holding[i] != nil {
			continue
		}
		l := leases[ShardLease(i, s.shards)]
		if l != nil && holder(l) != "" && holder(l) != s.id && s.live(l, now) {
			continue
		}
		if err := s.acquire(ctx, i, l); err != nil {
			if !apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err) {
				return err
			}
			continue // another replica was quicker
		}
		held++
	}
	return nil
}

// live reports whether l is held and was renewed within its duration, by this replica's
// clock.
func (s *sharder) live(l *coordinationv1.Lease, now time.Time) bool {
	if holder(l) == "" {
		return false
	}
	d := leaseDuration
	if l.Spec.LeaseDurationSeconds != nil {
		d = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	return now.Sub(s.seenAt(l.Name)) < d
}

// seenAt is when this replica last saw the Lease name change.
func (s *sharder) seenAt(name string) time.Time {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	return s.seen[name].at
}

func holder(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// preference orders the shards by rendezvous hashing of this replica's identity: replicas
// prefer different shards, so that they rarely reach for the same one.
func (s *sharder) preference() []int {
	order := make([]int, s.shards)
	score := make([]uint32, s.shards)
	for i := range order {
		order[i] = i
		h := fnv.New32a()
		_, _ = fmt.Fprintf(h, "%s/%d", s.id, i)
		score[i] = h.Sum32()
	}
	sort.Slice(order, func(a, b int) bool { return score[order[a]] > score[order[b]] })
	return order
}

// handBackOne hands back the held shard this replica prefers least. Called with s.mu held.
func (s *sharder) handBackOne(fair int) {
	pref := s.preference()
	for j := len(pref) - 1; j >= 0; j-- {
		if h := s.holding[pref[j]]; h != nil && !h.handBack {
			s.log.Info("handing a shard back to even out the replicas", "shard", pref[j], "fairShare", fair)
			h.handBack = true
			h.cancel()
			return
		}
	}
}

// view returns the Leases, by name, as the watch last saw them; or, when the watch is behind,
// as the API server has them now. The watch is behind when it has not shown this replica's
// own member Lease renewed for a few ticks: after an outage of the API server, client-go's
// reflector backs off for up to a minute before it lists again, and meanwhile every other
// replica's member Lease would look expired (so this one would take every shard) and each
// renewal from the stale copy would conflict.
func (s *sharder) view(ctx context.Context) (map[string]*coordinationv1.Lease, error) {
	leases := map[string]*coordinationv1.Lease{}
	for _, obj := range s.leases.GetStore().List() {
		if l, ok := obj.(*coordinationv1.Lease); ok {
			leases[l.Name] = l
		}
	}
	own := leases[memberLeaseName(s.id)]
	if own == nil || own.Spec.RenewTime == nil || time.Since(own.Spec.RenewTime.Time) < 3*retryPeriod {
		return leases, nil // up to date, or this replica's member Lease is not created yet
	}
	list, err := s.client.CoordinationV1().Leases(s.namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list the Leases, the watch being behind: %w", err)
	}
	clear(leases)
	for i := range list.Items {
		l := &list.Items[i]
		s.observe(nil, l)
		leases[l.Name] = l
	}
	return leases, nil
}

// renewMember renews (or creates) this replica's member Lease, from own, its copy in the
// view (nil: there is none yet).
func (s *sharder) renewMember(ctx context.Context, own *coordinationv1.Lease) error {
	leases := s.client.CoordinationV1().Leases(s.namespace)
	name := memberLeaseName(s.id)
	now := metav1.NewMicroTime(time.Now())
	secs := int32(leaseDuration / time.Second)
	if own == nil {
		_, err := leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{labelLease: "member"}},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &s.id, LeaseDurationSeconds: &secs, AcquireTime: &now, RenewTime: &now},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // the watch has not shown it yet
		}
		return err
	}
	l := own.DeepCopy()
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &s.id, &secs, &now
	_, err := leases.Update(ctx, l, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return nil // changed since the watch showed it (a push announced): next time
	}
	return err
}

// acquire takes shard i's Lease l (nil: there is none yet), which is free or expired, with
// an update that fails when another replica changed it since it was listed; then holds the
// shard. Called with s.mu held.
func (s *sharder) acquire(ctx context.Context, i int, l *coordinationv1.Lease) error {
	leases := s.client.CoordinationV1().Leases(s.namespace)
	name := ShardLease(i, s.shards)
	now := metav1.NewMicroTime(time.Now())
	secs := int32(leaseDuration / time.Second)
	spec := coordinationv1.LeaseSpec{HolderIdentity: &s.id, LeaseDurationSeconds: &secs, AcquireTime: &now, RenewTime: &now}
	var err error
	if l == nil {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: s.shardLabels()},
			Spec:       spec,
		}, metav1.CreateOptions{})
	} else {
		l = l.DeepCopy()
		transitions := int32(0)
		if l.Spec.LeaseTransitions != nil {
			transitions = *l.Spec.LeaseTransitions
		}
		if holder(l) != s.id {
			transitions++
		}
		spec.LeaseTransitions = &transitions
		l.Spec = spec
		if l.Labels == nil {
			l.Labels = map[string]string{}
		}
		for k, v := range s.shardLabels() {
			l.Labels[k] = v
		}
		_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	}
	if err != nil {
		return err
	}
	s.hold(ctx, i)
	return nil
}

func (s *sharder) shardLabels() map[string]string {
	if s.shards == 1 {
		return nil // older versions' Lease: no labels
	}
	return map[string]string{labelLease: "shard", labelShards: strconv.Itoa(s.shards)}
}

// hold renews shard i's Lease, just acquired, with client-go's leader election, and acts for
// the shard while it does. When the renewal ends (the Lease is lost, or the shard is handed
// back) the shard's work stops first; a shard handed back, or left as the daemon stops, then
// has its Lease released. Called with s.mu held.
func (s *sharder) hold(parent context.Context, i int) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	h := &holding{cancel: cancel, done: make(chan struct{})}
	s.holding[i] = h
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: ShardLease(i, s.shards), Namespace: s.namespace},
		Client:     s.client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: s.id},
		Labels:     s.shardLabels(),
	}
	log := s.log.With("shard", i, "lease", lock.LeaseMeta.Name)
	acquired := make(chan struct{})
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, LeaseDuration: leaseDuration, RenewDeadline: renewDeadline, RetryPeriod: retryPeriod,
		Name: lock.LeaseMeta.Name,
		Callbacks: leaderelection.LeaderCallbacks{
			// The shard's work runs below, and stops when the renewal does.
			OnStartedLeading: func(context.Context) { close(acquired) },
			OnStoppedLeading: func() {},
		},
	})
	if err != nil { // the config above is valid: never
		panic(err)
	}
	go func() {
		defer close(h.done)
		renewing := make(chan struct{})
		go func() {
			defer close(renewing)
			le.Run(ctx)
		}()
		select {
		case <-acquired:
			work, stop := context.WithCancel(ctx)
			go func() {
				<-renewing
				stop()
			}()
			log.Info("acting for the shard")
			s.owned.WithLabelValues(strconv.Itoa(i)).Set(1)
			s.act(work, i)
			s.owned.WithLabelValues(strconv.Itoa(i)).Set(0)
			stop()
		case <-renewing:
		}
		if ctx.Err() == nil {
			// The work ended on its own (it could not start): hand the shard back.
			s.mu.Lock()
			h.handBack = true
			s.mu.Unlock()
			cancel()
		}
		<-renewing
		s.mu.Lock()
		handBack := h.handBack
		delete(s.holding, i)
		s.mu.Unlock()
		if handBack || parent.Err() != nil {
			release(lock, s.id, log)
		}
		log.Info("stopped acting for the shard", "handedBack", handBack)
	}()
}

// release clears the holder of lock's Lease when it is still id, so that another replica
// takes it at once instead of after it expires.
func release(lock *resourcelock.LeaseLock, id string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rec, _, err := lock.Get(ctx)
	if err != nil || rec.HolderIdentity != id {
		return
	}
	now := metav1.NewTime(time.Now())
	if err := lock.Update(ctx, resourcelock.LeaderElectionRecord{
		LeaseDurationSeconds: 1, RenewTime: now, AcquireTime: now, LeaderTransitions: rec.LeaderTransitions,
	}); err != nil {
		log.Warn("release the shard's Lease; it expires instead", "err", err)
	}
}

// stopAll stops acting for every shard held and waits until each is released.
func (s *sharder) stopAll() {
	s.mu.Lock()
	var done []chan struct{}
	for _, h := range s.holding {
		h.cancel()
		done = append(done, h.done)
	}
	s.mu.Unlock()
	for _, c := range done {
		<-c
	}
}
