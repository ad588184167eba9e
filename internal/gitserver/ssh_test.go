package gitserver

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSSHServerServesGit(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("no ssh client on this machine")
	}
	srv, err := New(filepath.Join(t.TempDir(), "repos"), Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	_, err = srv.CreateRepo("demo")
	require.NoError(t, err)
	w, err := Clone(srv.URL("demo"), filepath.Join(t.TempDir(), "w"))
	require.NoError(t, err)
	sha, err := w.CommitAndPush("first", map[string]string{"a": "a"})
	require.NoError(t, err)

	signer, key, err := NewSSHKey()
	require.NoError(t, err)
	sshSrv, err := NewSSH(srv.Root, signer.PublicKey())
	require.NoError(t, err)
	t.Cleanup(func() { _ = sshSrv.Close() })

	dir := t.TempDir()
	keyFile, hostsFile := filepath.Join(dir, "id"), filepath.Join(dir, "known_hosts")
	require.NoError(t, os.WriteFile(keyFile, key, 0o600))
	require.NoError(t, os.WriteFile(hostsFile, []byte(sshSrv.KnownHosts()+"\n"), 0o600))
	sshCmd := "ssh -F /dev/null -i " + keyFile + " -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=" + hostsFile
	git := func(args ...string) (string, error) {
		cmd := exec.Command("git", args...)
		cmd.Env = append(os.Environ(), "GIT_SSH_COMMAND="+sshCmd, "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}

	out, err := git("ls-remote", sshSrv.URL("demo"), "refs/heads/main")
	require.NoError(t, err, out)
	assert.Equal(t, sha+"\trefs/heads/main", out)
	out, err = git("clone", "--quiet", sshSrv.URL("demo"), filepath.Join(dir, "clone"))
	require.NoError(t, err, out)

	tests := []struct {
		name, url string
	}{
		{"outside the root", strings.Replace(sshSrv.URL("demo"), "/demo.git", "/../../etc.git", 1)},
		{"missing repository", sshSrv.URL("nope")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := git("ls-remote", tt.url)
			assert.Error(t, err)
		})
	}

	// A key the server does not know is refused.
	_, stranger, err := NewSSHKey()
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(keyFile, stranger, 0o600))
	out, err = git("ls-remote", sshSrv.URL("demo"))
	require.Error(t, err)
	assert.Contains(t, out, "Permission denied")
}
