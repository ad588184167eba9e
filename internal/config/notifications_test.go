package config

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNotifications checks the notifications and writeBack sections: a valid receiver of
// each kind, the defaults, and a located error for each mistake, none quoting a URL.
func TestNotifications(t *testing.T) {
	c, err := Parse("c.yaml", []byte(`apiVersion: ebb.dev/v1alpha1
kind: Config
notifications:
- name: team
  url: https://hooks.example.com/services/T0/B0/secret
  format: slack
  events: [ROLLING_BACK, ROLLBACK_COMPLETED]
  pipelines: [web]
  signingSecret: {namespace: ebb, name: hooks, key: signing}
  maxBackoff: 30s
- name: ops
  urlSecret: {namespace: ebb, name: hooks, key: ops}
  events: [FAILED]
writeBack:
  author: {name: Release Bot}
`))
	require.NoError(t, err)
	require.Len(t, c.Notifications, 2)
	team := c.Notifications[0]
	assert.Equal(t, FormatSlack, team.Format)
	assert.Equal(t, []string{"ROLLING_BACK", "ROLLBACK_COMPLETED"}, team.Events)
	assert.Equal(t, []string{"web"}, team.Pipelines)
	assert.Equal(t, &SecretKey{Namespace: "ebb", Name: "hooks", Key: "signing"}, team.SigningSecret)
	assert.Equal(t, 30*time.Second, team.MaxBackoff.Duration)
	assert.Equal(t, &SecretKey{Namespace: "ebb", Name: "hooks", Key: "ops"}, c.Notifications[1].URLSecret)
	assert.Equal(t, Author{Name: "Release Bot", Email: "ebb@ebb.dev"}, c.WriteBack.CommitAuthor())

	_, err = Parse("c.yaml", []byte(`apiVersion: ebb.dev/v1alpha1
kind: Config
notifications:
- name: team
  url: ftp://token@hooks.example.com/x
  format: xml
  events: [ROLLED_BACK]
- name: team
  url: https://a.example.com
  urlSecret: {namespace: ebb, name: hooks}
  events: [FAILED]
- url: https://b.example.com
  signingSecret: {name: hooks, key: k}
`))
	require.Error(t, err)
	assert.Equal(t, []string{
		`c.yaml:5:8: receiver "team": url must be an http:// or https:// URL`,
		`c.yaml:6:11: receiver "team": format must be "json" or "slack", got "xml"`,
		`c.yaml:7:12: receiver "team": unknown event "ROLLED_BACK": want one of [QUEUED RUNNING WAITING COMPLETED FAILED CANCELED ROLLING_BACK ROLLBACK_COMPLETED ROLLBACK_FAILED]`,
		`c.yaml:8:3: receiver "team" needs exactly one of url and urlSecret`,
		`c.yaml:8:9: duplicate receiver name "team"`,
		`c.yaml:10:14: missing required field "key" in notifications[1].urlSecret`,
		`c.yaml:12:3: missing required field "name" in notifications[2]`,
		`c.yaml:12:3: notifications[2]: missing required field "events" (statuses such as ROLLING_BACK, ROLLBACK_COMPLETED)`,
		`c.yaml:13:18: missing required field "namespace" in notifications[2].signingSecret`,
	}, strings.Split(err.Error(), "\n"))
	assert.NotContains(t, err.Error(), "token@")
}
