// Package reconciler applies each pipeline stage's release to its cluster, verifies it, and
// when verification fails rolls the stage back to the release of its last known-good commit.
// It records what it does as Execution objects and keeps a StageLedger per stage (CRDs in group
// ebb.dev, see charts/ebb/crds), so a restarted daemon resumes where it stopped.
package reconciler

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"ebb.dev/ebb/internal/ssa"
)

// Group and version of ebb's own resources.
const (
	Group   = "ebb.dev"
	Version = "v1alpha1"
)

// Resources of ebb's own kinds.
var (
	ExecutionResource   = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "executions"}
	StageLedgerResource = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "stageledgers"}
)

// Labels ebb puts on its records and on every object it applies.
const (
	LabelPipeline = ssa.LabelPipeline
	LabelStage    = ssa.LabelStage
	LabelCommit   = "ebb.dev/commit"
	LabelKind     = "ebb.dev/kind"
	LabelRelease  = "ebb.dev/release"
)

// Status is the status of an execution, a stage or a task. The words are the ones users of
// rollback pipelines know.
type Status string

// Statuses.
const (
	Queued            Status = "QUEUED"
	Running           Status = "RUNNING"
	Waiting           Status = "WAITING"
	Completed         Status = "COMPLETED"
	Failed            Status = "FAILED"
	Canceled          Status = "CANCELED"
	RollingBack       Status = "ROLLING_BACK"
	RollbackCompleted Status = "ROLLBACK_COMPLETED"
	RollbackFailed    Status = "ROLLBACK_FAILED"
)

// Terminal reports whether nothing more will happen to an execution in status s.
func (s Status) Terminal() bool {
	switch s {
	case Completed, Failed, Canceled, RollbackCompleted, RollbackFailed:
		return true
	}
	return false
}

// Task names of the rolling model.
const (
	TaskCreateResources  = "Create namespace/secret/service"
	TaskUpdateDeployment = "Update deployment"
	TaskVerifyDeployment = "Verify deployment"
)

// FailureClass is one of the three classes of errors, decided where the error happens (as
// source-controller's Stalling, Waiting and Generic).
type FailureClass string

// Failure classes.
const (
	// FailureStalled: the release or the pipeline is wrong (an invalid object, an admission
	// denial, a missing Service, an unknown cluster). The execution ends FAILED, and the release
	// is not tried again until a commit changes it. The Pipeline is Stalled.
	FailureStalled FailureClass = "Stalled"
	// FailureWaiting: the cluster could not answer (unreachable, overloaded, forbidden). The
	// execution waits and tries again with a growing back-off; it never rolls back for it.
	FailureWaiting FailureClass = "Waiting"
	// FailureVerification: the release was applied and failed verification (or a person
	// rejected it): the stage rolls back.
	FailureVerification FailureClass = "VerificationFailed"
)

// ExecutionKind says whether an execution deploys a commit or rolls a stage back.
type ExecutionKind string

// Execution kinds.
const (
	KindDeploy   ExecutionKind = "Deploy"
	KindRollback ExecutionKind = "Rollback"
)

// Execution is one run of a pipeline for one commit, or one rollback of one stage.
type Execution struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ExecutionSpec   `json:"spec"`
	Status            ExecutionStatus `json:"status,omitempty"`
}

// ExecutionSpec is what an execution is for; it does not change once created.
type ExecutionSpec struct {
	// DisplayName is how people name it: <pipeline>#<n>, or <pipeline>_<stage>_rollback#<n>.
	DisplayName   string        `json:"displayName"`
	Pipeline      string        `json:"pipeline"`
	Number        int           `json:"number"`
	Kind          ExecutionKind `json:"kind"`
	Commit        string        `json:"commit,omitempty"`
	ShortCommit   string        `json:"shortCommit,omitempty"`
	CommitMessage string        `json:"commitMessage,omitempty"`
	// Parent and Stage name, for a rollback, the execution and stage it rolls back.
	Parent string `json:"parent,omitempty"`
	Stage  string `json:"stage,omitempty"`
}

// ExecutionStatus is where an execution is.
type ExecutionStatus struct {
	Phase    Status `json:"phase,omitempty"`
	Stage    string `json:"stage,omitempty"`
	Image    string `json:"image,omitempty"`
	Comment  string `json:"comment,omitempty"`
	Rollback string `json:"rollback,omitempty"`
	// Failure classifies why a FAILED (or ROLLBACK_*) execution failed, and why a WAITING one
	// waits for its cluster: see FailureClass.
	Failure    FailureClass  `json:"failure,omitempty"`
	StartedAt  *metav1.Time  `json:"startedAt,omitempty"`
	FinishedAt *metav1.Time  `json:"finishedAt,omitempty"`
	Stages     []StageRecord `json:"stages,omitempty"`
	// History lists the execution's status changes, oldest first, each with its sequence
	// number (1, 2, ...), so a reader that remembers the last number it saw (the notifier, the
	// dashboard) misses none, even when the execution moved on before it looked. It keeps the
	// newest historyLimit entries.
	History []PhaseChange `json:"history,omitempty"`
	// ObservedGeneration and Conditions (Ready, Reconciling, Stalled) say the same as Phase,
	// in the form kstatus, `kubectl wait` and Argo CD and Flux health checks read. The store
	// sets them from Phase and Failure on every write (see executionConditions).
	ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
}

// PhaseChange is one change of an execution's status: the status it took, when, at which
// stage, and the comment it had then.
type PhaseChange struct {
	Seq     int         `json:"seq"`
	Phase   Status      `json:"phase"`
	Stage   string      `json:"stage,omitempty"`
	At      metav1.Time `json:"at"`
	Comment string      `json:"comment,omitempty"`
}

// historyLimit bounds an execution's History: a stage that waits for its cluster for days
// changes status twice per attempt.
const historyLimit = 50

// StageRecord is one stage of an execution.
type StageRecord struct {
	Name        string       `json:"name"`
	Status      Status       `json:"status,omitempty"`
	ReleaseHash string       `json:"releaseHash,omitempty"`
	Images      []string     `json:"images,omitempty"`
	StartedAt   *metav1.Time `json:"startedAt,omitempty"`
	FinishedAt  *metav1.Time `json:"finishedAt,omitempty"`
	Message     string       `json:"message,omitempty"`
	Tasks       []TaskRecord `json:"tasks,omitempty"`
}

// TaskRecord is one task of a stage.
type TaskRecord struct {
	Name       string       `json:"name"`
	Status     Status       `json:"status,omitempty"`
	StartedAt  *metav1.Time `json:"startedAt,omitempty"`
	FinishedAt *metav1.Time `json:"finishedAt,omitempty"`
	Message    string       `json:"message,omitempty"`
}

// StageLedger remembers, for one stage of one pipeline, which releases ran, passed and failed.
type StageLedger struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              StageLedgerSpec   `json:"spec"`
	Status            StageLedgerStatus `json:"status,omitempty"`
}

// StageLedgerSpec names the stage.
type StageLedgerSpec struct {
	Pipeline string `json:"pipeline"`
	Stage    string `json:"stage"`
}

// StageLedgerStatus holds the stage's releases.
type StageLedgerStatus struct {
	// Current is the release the stage runs now.
	Current *ReleaseRecord `json:"current,omitempty"`
	// LastKnownGood is the newest release that passed verification in this stage.
	LastKnownGood *ReleaseRecord `json:"lastKnownGood,omitempty"`
	// Verified lists releases that passed verification, newest first, to recognise a revert.
	Verified []ReleaseRecord `json:"verified,omitempty"`
	// Failed lists quarantined releases, newest first: they are never applied again by a poll.
	Failed []ReleaseRecord `json:"failed,omitempty"`
	// Inventory is every object ebb applied to the stage and has not deleted since: the
	// objects of the release it runs, plus, while a release is applied or verified, the new
	// release's. Pruning deletes what it holds beyond the release verified (or restored).
	Inventory ssa.Inventory `json:"inventory,omitempty"`
	// Stalled is the release that last failed because it or the pipeline is wrong: it is not
	// tried again until a commit changes the release or the stage's definition.
	Stalled *ReleaseRecord `json:"stalled,omitempty"`
	// ObservedGeneration and Conditions summarise the ledger for kstatus and health checks;
	// the store sets them on every write (see ledgerConditions).
	ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
}

// ReleaseRecord identifies a release of a stage.
type ReleaseRecord struct {
	Commit      string       `json:"commit"`
	ShortCommit string       `json:"shortCommit,omitempty"`
	Hash        string       `json:"hash"`
	Images      []string     `json:"images,omitempty"`
	Execution   string       `json:"execution,omitempty"`
	At          *metav1.Time `json:"at,omitempty"`
	Reason      string       `json:"reason,omitempty"`
	RestoredBy  string       `json:"restoredBy,omitempty"`
	// Stage, in a stalled record, fingerprints the stage's definition the release stalled in.
	Stage string `json:"stage,omitempty"`
}

// ledgerHistory bounds the verified and failed lists.
const ledgerHistory = 20

// DisplayName is how people name execution n of pipeline: <pipeline>#<n>.
func DisplayName(pipeline string, n int) string { return pipeline + "#" + strconv.Itoa(n) }

// RollbackDisplayName names rollback n of a stage: <pipeline>_<stage>_rollback#<n>.
func RollbackDisplayName(pipeline, stage string, n int) string {
	return pipeline + "_" + stage + "_rollback#" + strconv.Itoa(n)
}

var nonDNS = regexp.MustCompile(`[^a-z0-9-]+`)

// ObjectName turns a display name such as "web#3" or "web_dev_rollback#2" into the DNS-safe
// object name that holds it ("web-3", "web-dev-rollback-2").
func ObjectName(display string) string {
	name := nonDNS.ReplaceAllString(strings.ToLower(display), "-")
	name = strings.Trim(name, "-")
	if len(name) > 253 {
		name = name[:253]
	}
	return name
}

// LedgerName is the object name of a stage's ledger.
func LedgerName(pipeline, stage string) string { return ObjectName(pipeline + "-" + stage) }

// ParseDisplayName splits "<name>#<n>" into its parts.
func ParseDisplayName(s string) (name string, n int, err error) {
	i := strings.LastIndexByte(s, '#')
	if i <= 0 {
		return "", 0, fmt.Errorf("execution %q: want NAME#N", s)
	}
	n, err = strconv.Atoi(s[i+1:])
	if err != nil || n < 1 {
		return "", 0, fmt.Errorf("execution %q: want NAME#N with N a positive number", s)
	}
	return s[:i], n, nil
}

func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}
