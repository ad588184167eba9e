package gitsource

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
