package notify

import (
	"fmt"
	"strings"
	"time"

	"ebb.dev/ebb/reconciler"
)

// Payload is the JSON body of a notification: one status change of one execution.
type Payload struct {
	// Pipeline and Execution name the run: "web", "web#3" (or "web_dev_rollback#1").
	Pipeline  string `json:"pipeline"`
	Execution string `json:"execution"`
	// Kind is Deploy or Rollback; Parent names the execution a rollback rolls back.
	Kind   string `json:"kind"`
	Parent string `json:"parent,omitempty"`
	// Seq numbers the execution's status changes: 1, 2, ... Messages of one execution are
	// sent in this order.
	Seq    int       `json:"seq"`
	Status string    `json:"status"`
	Stage  string    `json:"stage,omitempty"`
	At     time.Time `json:"at"`
	// Commit and CommitMessage are the commit the execution runs (for a rollback, the one it
	// restores).
	Commit        string `json:"commit,omitempty"`
	CommitMessage string `json:"commitMessage,omitempty"`
	// Image is the service's image the execution deploys.
	Image string `json:"image,omitempty"`
	// Comment names the trigger point: stage, task, reason, failed and restored commits.
	Comment string `json:"comment,omitempty"`
	// Restored is the release a rollback put back, when there is one.
	Restored *Restored `json:"restored,omitempty"`
}

// Restored is the known-good release a rollback restored (or is restoring).
type Restored struct {
	Execution string `json:"execution"`
	Commit    string `json:"commit,omitempty"`
	Image     string `json:"image,omitempty"`
	Status    string `json:"status,omitempty"`
}

// payload describes history entry h of x. A parent's restored release is its rollback
// execution's commit and image.
func (n *Notifier) payload(x *reconciler.Execution, h reconciler.PhaseChange) Payload {
	p := Payload{
		Pipeline: x.Spec.Pipeline, Execution: x.Spec.DisplayName, Kind: string(x.Spec.Kind),
		Seq: h.Seq, Status: string(h.Phase), Stage: h.Stage, At: h.At.UTC(),
		Commit: x.Spec.Commit, CommitMessage: x.Spec.CommitMessage, Image: x.Status.Image, Comment: h.Comment,
	}
	if x.Spec.Kind == reconciler.KindRollback {
		if parent, ok := n.Execution(x.Spec.Parent); ok {
			p.Parent = parent.Spec.DisplayName
		} else {
			p.Parent = x.Spec.Parent
		}
		p.Restored = &Restored{Execution: x.Spec.DisplayName, Commit: x.Spec.Commit, Image: x.Status.Image, Status: string(x.Status.Phase)}
		return p
	}
	if name := x.Status.Rollback; name != "" {
		p.Restored = &Restored{Execution: name}
		if rb, ok := n.Execution(name); ok {
			p.Restored = &Restored{Execution: rb.Spec.DisplayName, Commit: rb.Spec.Commit, Image: rb.Status.Image, Status: string(rb.Status.Phase)}
		}
	}
	return p
}

// slackMessage is p as a Slack incoming-webhook message.
func slackMessage(p Payload) map[string]string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s* %s", p.Execution, p.Status)
	if p.Stage != "" {
		fmt.Fprintf(&b, " (stage %s)", p.Stage)
	}
	if p.Commit != "" {
		fmt.Fprintf(&b, "\ncommit %s", short(p.Commit))
		if p.CommitMessage != "" {
			fmt.Fprintf(&b, ": %s", p.CommitMessage)
		}
	}
	if p.Image != "" {
		fmt.Fprintf(&b, "\nimage %s", p.Image)
	}
	if r := p.Restored; r != nil && r.Commit != "" {
		fmt.Fprintf(&b, "\nrestored commit %s (image %s) by %s", short(r.Commit), r.Image, r.Execution)
	}
	if p.Comment != "" {
		fmt.Fprintf(&b, "\n%s", p.Comment)
	}
	return map[string]string{"text": b.String()}
}

func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}
