package charttest

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	rbacv1 "k8s.io/api/rbac/v1"
)

// TestTemplateNotifications: receivers and the write-back author in values reach the daemon
// config as it parses them, their Secrets are read from the release namespace, and the Role
// may get exactly those Secrets.
func TestTemplateNotifications(t *testing.T) {
	out, err := helm("template", "ebb", chartDir, "--namespace", "ebb-system",
		"--set", "git.url=https://git.example.com/team/deploy.git",
		"--set-json", `notifications=[{"name":"team","urlSecret":{"name":"ebb-hooks","key":"slack-url"},"format":"slack","events":["ROLLING_BACK","ROLLBACK_COMPLETED"],"pipelines":["web"],"signingSecret":{"name":"ebb-signing","key":"key"},"maxBackoff":"2m"}]`,
		"--set", "writeBack.author.name=release-bot", "--set", "writeBack.author.email=bot@example.com")
	require.NoError(t, err, out)
	r := parseRendered(t, out)
	cfg := r.daemonConfig(t, "ebb-system/ebb")
	require.Len(t, cfg.Notifications, 1)
	n := cfg.Notifications[0]
	assert.Equal(t, "team", n.Name)
	assert.Equal(t, "slack", n.Format)
	assert.Equal(t, []string{"ROLLING_BACK", "ROLLBACK_COMPLETED"}, n.Events)
	assert.Equal(t, []string{"web"}, n.Pipelines)
	require.NotNil(t, n.URLSecret)
	assert.Equal(t, "ebb-system", n.URLSecret.Namespace)
	assert.Equal(t, "ebb-hooks", n.URLSecret.Name)
	require.NotNil(t, n.SigningSecret)
	assert.Equal(t, "ebb-signing", n.SigningSecret.Name)
	assert.Equal(t, "release-bot", cfg.WriteBack.CommitAuthor().Name)
	assert.Equal(t, "bot@example.com", cfg.WriteBack.CommitAuthor().Email)

	var role rbacv1.Role
	r.into(t, "Role", "ebb-system/ebb", &role)
	var names []string
	for _, rule := range role.Rules {
		for _, res := range rule.Resources {
			if res == "secrets" {
				names = append(names, rule.ResourceNames...)
			}
		}
	}
	assert.Subset(t, names, []string{"ebb-hooks", "ebb-signing"}, "the Role may get the receivers' Secrets")

	// No receiver: no notifications in the config, no Secret rule for them.
	out, err = helm("template", "ebb", chartDir, "--namespace", "ebb-system", "--set", "git.url=https://git.example.com/team/deploy.git")
	require.NoError(t, err, out)
	assert.Empty(t, parseRendered(t, out).daemonConfig(t, "ebb-system/ebb").Notifications)
}
