package gitsource

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCredentialsFromDir(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		FileUsername:    "ebb-bot\n",
		FilePassword:    testPassword + "\n",
		FileBearerToken: " " + testToken + " ",
		FileSSHKey:      "KEY\n",
		FileKnownHosts:  "host ssh-ed25519 AAAA\n",
	}
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600))
	}
	c, err := CredentialsFromDir(dir)
	require.NoError(t, err)
	assert.Equal(t, Credentials{
		Username: "ebb-bot", Password: testPassword, BearerToken: testToken,
		SSHKey: []byte("KEY\n"), KnownHosts: []byte("host ssh-ed25519 AAAA\n"),
	}, c)

	empty, err := CredentialsFromDir(t.TempDir())
	require.NoError(t, err)
	assert.Equal(t, Credentials{}, empty, "missing files are anonymous access")

	require.NoError(t, os.Mkdir(filepath.Join(t.TempDir(), "x"), 0o700))
	bad := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(bad, FilePassword), 0o700))
	_, err = CredentialsFromDir(bad)
	assert.ErrorContains(t, err, "read credential file")
}

func TestCredentialsFromEnv(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "identity")
	require.NoError(t, os.WriteFile(keyFile, []byte("KEY"), 0o600))
	env := map[string]string{
		EnvUsername:           "ebb-bot",
		EnvPassword:           testPassword,
		EnvBearerToken:        testToken,
		EnvSSHKey + "_FILE":   keyFile,
		EnvKnownHosts:         "host ssh-ed25519 AAAA",
		"EBB_GIT_UNRELATED":   "x",
		EnvPassword + "_FILE": "/ignored/because/the/value/is/set",
	}
	c, err := CredentialsFromEnv(func(k string) string { return env[k] })
	require.NoError(t, err)
	assert.Equal(t, Credentials{
		Username: "ebb-bot", Password: testPassword, BearerToken: testToken,
		SSHKey: []byte("KEY"), KnownHosts: []byte("host ssh-ed25519 AAAA"),
	}, c)

	_, err = CredentialsFromEnv(func(k string) string {
		if k == EnvPassword+"_FILE" {
			return "/nonexistent/password"
		}
		return ""
	})
	assert.ErrorContains(t, err, "EBB_GIT_PASSWORD_FILE")
}

// TestNoCredentialInLogs drives a source through success and every kind of failure with
// credentials of each sort, logging at debug level, and checks that no credential appears in
// the logs, the errors, the status or the metrics.
func TestNoCredentialInLogs(t *testing.T) {
	f := newFixture(t, true)
	var errs []string
	record := func(s *Source) {
		_, _, err := s.Poll(context.Background())
		if err != nil {
			errs = append(errs, err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", s.Status()))
		}
	}
	good := f.source(t)
	record(good)
	f.push(t, "More", map[string]string{"a": "b"})
	record(good)
	record(f.source(t, func(o *Options) { o.Credentials.Password = testPassword + "-wrong" }))
	record(f.source(t, func(o *Options) { o.Credentials = Credentials{BearerToken: testToken} }))
	record(f.source(t, func(o *Options) {
		o.Credentials = Credentials{}
		o.URL = strings.Replace(o.URL, "http://", "http://"+testUser+":"+testPassword+"@", 1)
	}))
	record(f.source(t, func(o *Options) {
		o.Credentials = Credentials{}
		o.URL = strings.Replace(o.URL, "http://", "http://"+testToken+"@", 1)
	}))
	require.NoError(t, f.srv.Down())
	record(good)
	require.NoError(t, f.srv.Up())
	record(good)
	newTestLogger(f.logs).Info("credentials are safe to log", "creds", Credentials{Username: testUser, Password: testPassword, BearerToken: testToken})

	logs := f.logs.String()
	require.Contains(t, logs, "git poll failed", "the failures were logged")
	require.Contains(t, logs, "authentication required")
	require.Contains(t, logs, "password="+redacted)
	require.NotEmpty(t, errs)
	assertNoSecrets(t, logs)
	assertNoSecrets(t, strings.Join(errs, "\n"))

	var metrics bytes.Buffer
	families, err := f.reg.Gather()
	require.NoError(t, err)
	for _, mf := range families {
		_, err := expfmt.MetricFamilyToText(&metrics, mf)
		require.NoError(t, err)
	}
	require.Contains(t, metrics.String(), "ebb_git_polls_total")
	assertNoSecrets(t, metrics.String())
	assert.NotContains(t, metrics.String(), testUser+":")
}

// secretVolume lays out dir as the kubelet lays out a mounted Secret: each key a symlink
// through "..data" to a timestamped directory. Each call is one update: a new directory, then
// "..data" swapped to it in one rename, then the old directory removed.
func secretVolume(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	gen := filepath.Join(dir, fmt.Sprintf("..%d", time.Now().UnixNano()))
	require.NoError(t, os.MkdirAll(gen, 0o700))
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(gen, name), []byte(content), 0o600))
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); errors.Is(err, fs.ErrNotExist) {
			require.NoError(t, os.Symlink(filepath.Join("..data", name), link))
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	require.NoError(t, os.Symlink(filepath.Base(gen), tmp))
	require.NoError(t, os.Rename(tmp, filepath.Join(dir, "..data")))
	if old != "" {
		require.NoError(t, os.RemoveAll(filepath.Join(dir, old)))
	}
}

// TestRotatedCredentials rotates the password on the Git server and then in the mounted
// Secret: polls fail with the old one, and the running source uses the new one without a
// restart, with neither password in its logs.
func TestRotatedCredentials(t *testing.T) {
	const rotated = "r0tated-pa55-never-printed"
	f := newFixture(t, true)
	dir := t.TempDir()
	secretVolume(t, dir, map[string]string{FileUsername: testUser, FilePassword: testPassword})
	s := f.source(t, func(o *Options) {
		o.Credentials, o.CredentialsDir = Credentials{}, dir
		o.Interval = time.Hour // only triggers poll: the reload's, and the test's
	})
	snaps := make(chan *Snapshot, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Run(ctx, func(snap *Snapshot) { snaps <- snap })
	}()
	t.Cleanup(func() { cancel(); <-done })
	first := <-snaps
	assert.Equal(t, f.head(t), first.Commit)

	f.srv.SetCredentials(testUser, rotated)
	_, err := f.work.Git("remote", "set-url", "origin", f.srv.AuthURL(f.name, testUser, rotated))
	require.NoError(t, err)
	next := f.push(t, "After the rotation", map[string]string{"b": "c"})
	s.Trigger()
	eventually(t, func() bool { return s.Status().ConsecutiveFailures > 0 }, "the old password is refused")
	refused := s.Status().Err
	require.ErrorContains(t, refused, "authentication required")

	secretVolume(t, dir, map[string]string{FileUsername: testUser, FilePassword: rotated})
	select {
	case snap := <-snaps:
		assert.Equal(t, next, snap.Commit, "the new password fetched the new commit")
	case <-time.After(time.Minute):
		t.Fatalf("no snapshot after the rotation; last error: %v", s.Status().Err)
	}
	assert.Equal(t, 0, s.Status().ConsecutiveFailures)
	assert.Equal(t, 1.0, metricValue(t, f.reg, "ebb_git_credential_reloads_total", map[string]string{"source": s.Name()}))
	logs := f.logs.String()
	assert.Contains(t, logs, "git credentials changed; the next request uses them")
	assertNoSecrets(t, logs, rotated)
	assertNoSecrets(t, refused.Error(), rotated)
}
