package reconciler

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/planner"
)

func TestDecide(t *testing.T) {
	dev, prod := &planner.Stage{Name: "dev"}, &planner.Stage{Name: "prod"}
	target := func(sha, message, devHash, prodHash string) *Target {
		return &Target{
			Pipeline: &planner.Pipeline{Metadata: planner.Metadata{Name: "web"}},
			Commit:   Commit{SHA: sha, Message: message},
			Stages:   []Desired{{Stage: dev, Hash: devHash}, {Stage: prod, Hash: prodHash}},
		}
	}
	good := ReleaseRecord{Commit: "c1", Hash: "h1", Execution: "web#1"}
	bad := ReleaseRecord{Commit: "c2", Hash: "h2", Execution: "web#2", Reason: "rollout failed"}
	restored := good
	restored.RestoredBy = "web_dev_rollback#1"
	inSync := &StageLedgerStatus{Current: &good, LastKnownGood: &good, Verified: []ReleaseRecord{good}}
	afterRollback := &StageLedgerStatus{Current: &restored, LastKnownGood: &good, Verified: []ReleaseRecord{good}, Failed: []ReleaseRecord{bad}}
	prodGood := ReleaseRecord{Commit: "c1", Hash: "p1", Execution: "web#1"}
	prodInSync := &StageLedgerStatus{Current: &prodGood, LastKnownGood: &prodGood, Verified: []ReleaseRecord{prodGood}}

	tests := []struct {
		name       string
		target     *Target
		ledgers    map[string]*StageLedgerStatus
		deploy     bool
		redeployOf string
		reason     string
	}{
		{name: "first deploy", target: target("c1", "", "h1", "p1"), ledgers: nil, deploy: true, reason: "stage dev: release changed"},
		{name: "in sync", target: target("c3", "docs", "h1", "p1"), ledgers: map[string]*StageLedgerStatus{"dev": inSync, "prod": prodInSync}, deploy: false},
		{name: "new release", target: target("c3", "", "h3", "p3"), ledgers: map[string]*StageLedgerStatus{"dev": inSync, "prod": prodInSync}, deploy: true},
		{name: "only prod changed", target: target("c3", "", "h1", "p3"), ledgers: map[string]*StageLedgerStatus{"dev": inSync, "prod": prodInSync}, deploy: true, reason: "stage prod: release changed"},
		{name: "failed release is quarantined", target: target("c2", "", "h2", "p2"), ledgers: map[string]*StageLedgerStatus{"dev": afterRollback, "prod": prodInSync}, deploy: false, reason: "stage dev: release h2 of commit c2 is quarantined: it failed in web#2 (rollout failed)"},
		{name: "unrelated commit keeps the quarantine", target: target("c4", "readme", "h2", "p2"), ledgers: map[string]*StageLedgerStatus{"dev": afterRollback, "prod": prodInSync}, deploy: false},
		{name: "commit changing the release is tried", target: target("c5", "", "h5", "p5"), ledgers: map[string]*StageLedgerStatus{"dev": afterRollback, "prod": prodInSync}, deploy: true},
		{name: "revert to the restored release is a redeploy", target: target("c6", "Revert\n\nThis reverts commit c2.", "h1", "p1"), ledgers: map[string]*StageLedgerStatus{"dev": afterRollback, "prod": prodInSync}, deploy: true, redeployOf: "web#1"},
		{name: "revert to an older verified release", target: target("c7", "", "h0", "p1"), ledgers: map[string]*StageLedgerStatus{"dev": {Current: &good, Verified: []ReleaseRecord{good, {Commit: "c0", Hash: "h0", Execution: "web#0"}}}, "prod": prodInSync}, deploy: true, redeployOf: "web#0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decide(tt.target, tt.ledgers)
			assert.Equal(t, tt.deploy, d.deploy, d.reason)
			if tt.reason != "" {
				assert.Equal(t, tt.reason, d.reason)
			}
			if tt.redeployOf == "" {
				assert.Nil(t, d.redeployOf)
			} else if assert.NotNil(t, d.redeployOf) {
				assert.Equal(t, tt.redeployOf, d.redeployOf.Execution)
			}
		})
	}
}

func TestCommitReverts(t *testing.T) {
	c := Commit{Message: "Revert \"bump\"\n\nThis reverts commit 0123456789abcdef0123456789abcdef01234567.\n"}
	assert.Equal(t, "0123456789abcdef0123456789abcdef01234567", c.Reverts())
	assert.Empty(t, Commit{Message: "bump to 1.2"}.Reverts())
}

func TestObjectName(t *testing.T) {
	assert.Equal(t, "web-3", ObjectName(DisplayName("web", 3)))
	assert.Equal(t, "web-dev-rollback-2", ObjectName(RollbackDisplayName("web", "dev", 2)))
	name, n, err := ParseDisplayName("web_dev_rollback#2")
	assert.NoError(t, err)
	assert.Equal(t, "web_dev_rollback", name)
	assert.Equal(t, 2, n)
	_, _, err = ParseDisplayName("web")
	assert.Error(t, err)
}

func TestHealthCheckNeverPrintsCredentials(t *testing.T) {
	check := HealthCheck{URL: "http://ebb:s3cret@127.0.0.1:1/healthz", Interval: time.Millisecond, Successes: 1, Failures: 2, Timeout: time.Second}
	err := check.Run(context.Background(), nil)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "s3cret")
	assert.Contains(t, err.Error(), "connection refused")
}
