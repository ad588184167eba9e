package reconciler

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"ebb.dev/ebb/planner"
)

// TestDecideWriteBack: ebb's own write-back commit, asking for the release a rollback
// restored, is in sync and names the stages to record; a look-alike that restores another
// commit, or a commit without the trailers, is a redeploy as a revert is.
func TestDecideWriteBack(t *testing.T) {
	dev := &planner.Stage{Name: "dev"}
	good := ReleaseRecord{Commit: "c1", Hash: "h1", Execution: "web#1"}
	restored := good
	restored.RestoredBy = "web_dev_rollback#1"
	ledgers := map[string]*StageLedgerStatus{"dev": {Current: &restored, LastKnownGood: &good, Verified: []ReleaseRecord{good}}}
	target := func(message string) *Target {
		return &Target{Pipeline: &planner.Pipeline{Metadata: planner.Metadata{Name: "web"}},
			Commit: Commit{SHA: "c9", Message: message}, Stages: []Desired{{Stage: dev, Hash: "h1"}}}
	}
	own := "ebb: restore pipeline web to c1\n\nbody\n\nEbb-Execution: web#2\nEbb-Restores: c1\n"
	d := decide(target(own), ledgers)
	assert.False(t, d.deploy)
	assert.Equal(t, []string{"dev"}, d.writtenBack)
	assert.Equal(t, "commit c9 is ebb's write-back of web#2: stages dev run the release it restores", d.reason)

	for name, message := range map[string]string{
		"restores another commit": "x\n\nEbb-Execution: web#2\nEbb-Restores: c0\n",
		"no trailers":             "Revert \"release 2\"\n\nThis reverts commit c2.",
	} {
		d := decide(target(message), ledgers)
		assert.True(t, d.deploy, name)
		assert.Empty(t, d.writtenBack, name)
	}

	execution, restores := Commit{Message: own}.WriteBack()
	assert.Equal(t, "web#2", execution)
	assert.Equal(t, "c1", restores)
}
