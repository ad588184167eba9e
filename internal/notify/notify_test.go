package notify_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ebb.dev/ebb/internal/daemontest"
	"ebb.dev/ebb/internal/notify"
	"ebb.dev/ebb/reconciler"
)

// TestRollbackNotified: a failed release rolls back; the receiver (its URL, holding a token,
// in a Secret) gets ROLLING_BACK, then ROLLBACK_COMPLETED, each naming the pipeline, the
// execution, the stage, the commit, the image, the trigger point and the restored release,
// each signed with the signing secret. A receiver filtered to another pipeline gets nothing,
// and the token is in no log line, Event or record.
func TestRollbackNotified(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "web")
	team, other, chat := newReceiver(t), newReceiver(t), newReceiver(t)
	const token, key = "s3cr3t-hook-token", "signing-key-1"
	e.secret("hooks", map[string]string{"team": team.URL + "/hook/" + token + "?token=" + token, "signing": key})
	d := e.startDaemon(fmt.Sprintf(`- name: team
  urlSecret: {namespace: %[1]s, name: hooks, key: team}
  format: json
  events: [ROLLING_BACK, ROLLBACK_COMPLETED]
  signingSecret: {namespace: %[1]s, name: hooks, key: signing}
- name: other
  url: %[2]s/other
  events: [ROLLING_BACK, ROLLBACK_COMPLETED, COMPLETED, RUNNING]
  pipelines: [not-web]
- name: chat
  url: %[3]s/services/T0/B0/chat-token
  format: slack
  events: [ROLLBACK_COMPLETED]
  pipelines: [web]
`, e.records, other.URL, chat.URL))

	good := e.release("1.0")
	daemontest.WaitExecution(t, e.store, "web", good, reconciler.Completed)
	bad := e.release("2.0-broken")
	x := daemontest.WaitExecution(t, e.store, "web", bad, reconciler.RollbackCompleted)

	var got []notify.Payload
	require.Eventually(t, func() bool { return len(team.deliveries("")) >= 2 }, 30*time.Second, 20*time.Millisecond)
	for _, dl := range team.deliveries("") {
		got = append(got, dl.Payload)
		assert.Equal(t, notify.Sign([]byte(key), dl.Body), dl.Signature, "signature of %s", dl.ID)
		assert.Equal(t, fmt.Sprintf("%s/%d", x.Name, dl.Payload.Seq), dl.ID)
	}
	require.Len(t, got, 2, "only the rollback's two statuses: %+v", got)
	for i, status := range []reconciler.Status{reconciler.RollingBack, reconciler.RollbackCompleted} {
		p := got[i]
		assert.Equal(t, string(status), p.Status)
		assert.Equal(t, "web", p.Pipeline)
		assert.Equal(t, "web#2", p.Execution)
		assert.Equal(t, "dev", p.Stage)
		assert.Equal(t, bad, p.Commit)
		assert.Equal(t, "release 2.0-broken", p.CommitMessage)
		assert.Equal(t, "registry.example/web:2.0-broken", p.Image)
		assert.Contains(t, p.Comment, "stage dev, task \"Verify deployment\" failed at commit "+bad[:7])
		assert.Contains(t, p.Comment, "rolling back to commit "+good[:7])
		require.NotNil(t, p.Restored, status)
		assert.Equal(t, "web_dev_rollback#1", p.Restored.Execution)
		assert.Equal(t, good, p.Restored.Commit)
		assert.Equal(t, "registry.example/web:1.0", p.Restored.Image)
	}
	assert.Less(t, got[0].Seq, got[1].Seq)
	assert.Contains(t, got[1].Comment, "restored by web_dev_rollback#1")

	// The delivery is recorded on the execution.
	assert.Eventually(t, func() bool {
		stored, err := e.store.GetExecution(context.Background(), x.Name)
		return err == nil && stored.Annotations[notify.AnnotationPrefix+"team"] == fmt.Sprint(got[1].Seq)
	}, 10*time.Second, 20*time.Millisecond, "the execution records seq %d as delivered to team", got[1].Seq)
	assert.Empty(t, other.deliveries(""), "the other receiver only wants pipeline not-web")
	assert.Equal(t, 2.0, d.metric(t, `ebb_notifications_total{receiver="team",result="delivered"}`))
	assert.Equal(t, 0.0, d.metric(t, `ebb_notifications_total{receiver="team",result="failed"}`))

	// The Slack receiver gets the same as one text.
	require.Eventually(t, func() bool { return len(chat.deliveries("")) == 1 }, 30*time.Second, 20*time.Millisecond)
	text := chat.deliveries("")[0].Slack.Text
	for _, want := range []string{"*web#2* ROLLBACK_COMPLETED (stage dev)", "commit " + bad[:7] + ": release 2.0-broken",
		"image registry.example/web:2.0-broken", "restored commit " + good[:7] + " (image registry.example/web:1.0) by web_dev_rollback#1",
		"rolling back to commit " + good[:7]} {
		assert.Contains(t, text, want)
	}
	assert.Empty(t, d.Lines("chat-token"), "the Slack URL's token is in no log line")

	assert.Empty(t, d.Lines(token), "the URL's token is in no log line")
	assert.Empty(t, d.Lines(key), "the signing key is in no log line")
	events, err := e.cs.CoreV1().Events(e.records).List(context.Background(), metav1.ListOptions{})
	require.NoError(t, err)
	for _, ev := range events.Items {
		assert.NotContains(t, ev.Message, token)
	}
	for _, rec := range e.executionsText(t) {
		assert.NotContains(t, rec, token)
	}
}

// TestReceiverDownAndKill9: the receiver is down while a release rolls back, and the daemon
// is killed with SIGKILL meanwhile; once a new daemon runs and the receiver is back, every
// notification arrives, exactly once (nothing was in flight: the receiver refused them all)
// and in order per execution.
func TestReceiverDownAndKill9(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "down")
	hook := newReceiver(t)
	receivers := fmt.Sprintf(`- name: team
  url: %s/hook
  events: [RUNNING, COMPLETED, ROLLING_BACK, ROLLBACK_COMPLETED]
  maxBackoff: 2s
`, hook.URL)
	d := e.startDaemon(receivers)
	good := e.release("1.0")
	daemontest.WaitExecution(t, e.store, "down", good, reconciler.Completed)
	require.Eventually(t, func() bool { return len(hook.deliveries("down#1")) >= 2 }, 30*time.Second, 20*time.Millisecond,
		"down#1: RUNNING and COMPLETED delivered while the receiver is up")

	hook.setDown(true)
	bad := e.release("2.0-broken")
	daemontest.WaitExecution(t, e.store, "down", bad, reconciler.RollbackCompleted)
	require.Eventually(t, func() bool { return hook.refusals() >= 2 }, 30*time.Second, 20*time.Millisecond, "the daemon tried")
	d.Kill()

	restarted := e.startDaemon(receivers)
	restarted.WaitLog(30*time.Second, "msg", "notification not delivered; trying again")
	assert.Positive(t, restarted.metric(t, `ebb_notifications_total{receiver="team",result="failed"}`))
	hook.setDown(false)

	// What every execution's history asks to be sent.
	want := map[string][]string{}
	list, err := e.store.ListExecutions(context.Background(), "down")
	require.NoError(t, err)
	for _, x := range list {
		for _, h := range x.Status.History {
			switch h.Phase {
			case reconciler.Running, reconciler.Completed, reconciler.RollingBack, reconciler.RollbackCompleted:
				want[x.Spec.DisplayName] = append(want[x.Spec.DisplayName], fmt.Sprintf("%d %s", h.Seq, h.Phase))
			}
		}
	}
	require.Contains(t, want, "down#2")
	require.Contains(t, want, "down_dev_rollback#1")
	for execution, seqs := range want {
		require.Eventually(t, func() bool { return len(hook.deliveries(execution)) >= len(seqs) }, 60*time.Second, 50*time.Millisecond,
			"%s: want %v, got %d", execution, seqs, len(hook.deliveries(execution)))
	}
	time.Sleep(3 * time.Second) // time for a duplicate to show, if there were one
	for execution, seqs := range want {
		var got []string
		for _, dl := range hook.deliveries(execution) {
			got = append(got, fmt.Sprintf("%d %s", dl.Payload.Seq, dl.Payload.Status))
		}
		assert.Equal(t, seqs, got, "%s: every notification once, in order", execution)
	}
	rb := hook.deliveries("down#2")
	require.NotEmpty(t, rb)
	assert.Equal(t, "ROLLING_BACK", rb[len(rb)-2].Payload.Status)
	assert.Equal(t, good, rb[len(rb)-1].Payload.Restored.Commit)
}

// executionsText returns every execution record of the env, as stored, in JSON.
func (e *env) executionsText(t *testing.T) []string {
	list, err := e.store.ListExecutions(context.Background(), "")
	require.NoError(t, err)
	var out []string
	for _, x := range list {
		out = append(out, fmt.Sprintf("%+v", x))
	}
	return out
}
