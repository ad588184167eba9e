package gitsource

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	gossh "golang.org/x/crypto/ssh"

	"ebb.dev/ebb/internal/gitserver"
)

func TestPollOverSSH(t *testing.T) {
	f := newFixture(t, false)
	client, clientKey, err := gitserver.NewSSHKey()
	require.NoError(t, err)
	sshSrv, err := gitserver.NewSSH(f.srv.Root, client.PublicKey())
	require.NoError(t, err)
	t.Cleanup(func() { _ = sshSrv.Close() })
	_, strangerKey, err := gitserver.NewSSHKey()
	require.NoError(t, err)
	other, _, err := gitserver.NewSSHKey()
	require.NoError(t, err)
	wrongHosts := "[127.0.0.1]:" + portOf(sshSrv.Addr()) + " " + string(gossh.MarshalAuthorizedKey(other.PublicKey()))
	emptyHosts := filepath.Join(t.TempDir(), "known_hosts")
	require.NoError(t, os.WriteFile(emptyHosts, nil, 0o600))

	tests := []struct {
		name     string
		creds    Credentials
		wantKind ErrorKind
		wantMsg  string
	}{
		{name: "key and known_hosts", creds: Credentials{SSHKey: clientKey, KnownHosts: []byte(sshSrv.KnownHosts())}},
		{name: "host key not in known_hosts", creds: Credentials{SSHKey: clientKey, KnownHosts: []byte(wrongHosts)},
			wantKind: KindAuth, wantMsg: "knownhosts: key mismatch"},
		{name: "no known_hosts given: the default file is checked", creds: Credentials{SSHKey: clientKey},
			wantKind: KindAuth, wantMsg: "knownhosts: key is unknown"},
		{name: "key not authorized", creds: Credentials{SSHKey: strangerKey, KnownHosts: []byte(sshSrv.KnownHosts())},
			wantKind: KindAuth, wantMsg: "unable to authenticate"},
		{name: "host key check explicitly off", creds: Credentials{SSHKey: clientKey, InsecureIgnoreHostKey: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SSH_KNOWN_HOSTS", emptyHosts)
			s := f.source(t, func(o *Options) {
				o.URL = sshSrv.URL(f.name)
				o.Credentials = tt.creds
			})
			snap, _, err := s.Poll(context.Background())
			if tt.wantKind != "" {
				require.Error(t, err)
				assert.Equal(t, tt.wantKind, KindOf(err), "err: %v", err)
				assert.Contains(t, err.Error(), tt.wantMsg)
				assertNoSecrets(t, err.Error(), string(clientKey), string(strangerKey))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, f.head(t), snap.Commit)
			assert.Equal(t, "ssh://git@"+sshSrv.Addr()+"/pipelines.git", s.URL())

			sha := f.push(t, "Over ssh", map[string]string{"pipelines/web.yaml": "ssh"})
			snap, changed := poll(t, s)
			assert.True(t, changed)
			assert.Equal(t, sha, snap.Commit)
			data, err := fs.ReadFile(snap.FS, "pipelines/web.yaml")
			require.NoError(t, err)
			assert.Equal(t, "ssh", string(data))
		})
	}
	assert.Positive(t, sshSrv.Sessions())
	assertNoSecrets(t, f.logs.String(), string(clientKey), string(strangerKey))
}

func portOf(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[i+1:]
		}
	}
	return addr
}
