package gitsource

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/go-git/go-git/v5/plumbing/transport"
	gogithttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gogitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
)

// Credentials authenticate a Source to its remote. The zero value is anonymous access. Which
// fields apply depends on the URL's scheme: Username/Password or BearerToken over https,
// SSHKey (with KnownHosts) over ssh, nothing for file:// and local paths.
//
// The file names and environment variables are those Flux users know from its Git Secrets.
type Credentials struct {
	// Username and Password are basic auth over https. A personal access token goes in
	// Password (GitHub accepts any user name, GitLab wants "oauth2", Bitbucket "x-token-auth").
	// With SSHKey, Password is the key's passphrase.
	Username, Password string
	// BearerToken is sent as "Authorization: Bearer <token>" over https.
	BearerToken string
	// SSHKey is a PEM private key (OpenSSH or PKCS#8) for ssh.
	SSHKey []byte
	// SSHUser is the ssh user when the URL names none; default "git".
	SSHUser string
	// KnownHosts is the content of a known_hosts file that must list the ssh server's host key.
	// When empty, SSH_KNOWN_HOSTS or ~/.ssh/known_hosts is used, as by ssh itself.
	KnownHosts []byte
	// InsecureIgnoreHostKey accepts any ssh host key. It is never the default; it exists for
	// throwaway test setups only.
	InsecureIgnoreHostKey bool
}

// Files read by CredentialsFromDir, one value per file, as keys of a mounted Secret.
const (
	FileUsername    = "username"
	FilePassword    = "password"
	FileBearerToken = "bearerToken"
	FileSSHKey      = "identity"
	FileKnownHosts  = "known_hosts"
)

// Environment variables read by CredentialsFromEnv. Each may also be given as a path in the
// variable of the same name with a _FILE suffix (EBB_GIT_PASSWORD_FILE=/secrets/password).
const (
	EnvUsername    = "EBB_GIT_USERNAME"
	EnvPassword    = "EBB_GIT_PASSWORD"
	EnvBearerToken = "EBB_GIT_BEARER_TOKEN"
	EnvSSHKey      = "EBB_GIT_SSH_KEY"
	EnvKnownHosts  = "EBB_GIT_KNOWN_HOSTS"
)

// CredentialsFromDir reads credentials from a directory of files, as Kubernetes mounts a
// Secret: username, password, bearerToken, identity (ssh private key), known_hosts. Missing
// files are simply not set. Surrounding whitespace is trimmed from every value but the key.
func CredentialsFromDir(dir string) (Credentials, error) {
	var c Credentials
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			// The error names the file, never its content.
			return nil, fmt.Errorf("read credential file %q: %w", filepath.Join(dir, name), err)
		}
		return b, nil
	}
	for _, f := range []struct {
		name string
		set  func([]byte)
	}{
		{FileUsername, func(b []byte) { c.Username = strings.TrimSpace(string(b)) }},
		{FilePassword, func(b []byte) { c.Password = strings.TrimSpace(string(b)) }},
		{FileBearerToken, func(b []byte) { c.BearerToken = strings.TrimSpace(string(b)) }},
		{FileSSHKey, func(b []byte) { c.SSHKey = b }},
		{FileKnownHosts, func(b []byte) { c.KnownHosts = b }},
	} {
		b, err := read(f.name)
		if err != nil {
			return Credentials{}, err
		}
		if b != nil {
			f.set(b)
		}
	}
	return c, nil
}

// CredentialsFromEnv reads credentials from the EBB_GIT_* variables through getenv (os.Getenv
// in the daemon). A variable with a _FILE suffix names a file holding the value.
func CredentialsFromEnv(getenv func(string) string) (Credentials, error) {
	var c Credentials
	get := func(name string) ([]byte, error) {
		if v := getenv(name); v != "" {
			return []byte(v), nil
		}
		if p := getenv(name + "_FILE"); p != "" {
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, fmt.Errorf("read credential file %q from %s_FILE: %w", p, name, err)
			}
			return b, nil
		}
		return nil, nil
	}
	for _, f := range []struct {
		name string
		set  func([]byte)
	}{
		{EnvUsername, func(b []byte) { c.Username = strings.TrimSpace(string(b)) }},
		{EnvPassword, func(b []byte) { c.Password = strings.TrimSpace(string(b)) }},
		{EnvBearerToken, func(b []byte) { c.BearerToken = strings.TrimSpace(string(b)) }},
		{EnvSSHKey, func(b []byte) { c.SSHKey = b }},
		{EnvKnownHosts, func(b []byte) { c.KnownHosts = b }},
	} {
		b, err := get(f.name)
		if err != nil {
			return Credentials{}, err
		}
		if b != nil {
			f.set(b)
		}
	}
	return c, nil
}

// secrets lists the values to scrub from anything printed.
func (c Credentials) secrets() []string {
	return []string{c.Password, c.BearerToken, string(c.SSHKey)}
}

// String never prints a secret, so a Credentials value is safe in a log line.
func (c Credentials) String() string {
	var parts []string
	if c.Username != "" {
		parts = append(parts, "username="+c.Username)
	}
	if c.Password != "" {
		parts = append(parts, "password="+redacted)
	}
	if c.BearerToken != "" {
		parts = append(parts, "bearerToken="+redacted)
	}
	if len(c.SSHKey) > 0 {
		parts = append(parts, "sshKey="+redacted)
	}
	if len(parts) == 0 {
		return "anonymous"
	}
	return strings.Join(parts, " ")
}

// LogValue keeps slog from printing the fields.
func (c Credentials) LogValue() slog.Value { return slog.StringValue(c.String()) }

// authMethod returns the go-git auth for endpoint ep. For ssh it checks the host key against
// known_hosts, writing KnownHosts to a file under dir since the knownhosts package reads files.
func (c Credentials) authMethod(ep *transport.Endpoint, dir string) (transport.AuthMethod, error) {
	switch ep.Protocol {
	case "http", "https":
		switch {
		case c.BearerToken != "":
			return &gogithttp.TokenAuth{Token: c.BearerToken}, nil
		case c.Username != "" || c.Password != "":
			return &gogithttp.BasicAuth{Username: c.Username, Password: c.Password}, nil
		}
		return nil, nil
	case "ssh":
		return c.sshAuth(ep, dir)
	case "file":
		return nil, nil
	}
	return nil, fmt.Errorf("unsupported protocol %q", ep.Protocol)
}

func (c Credentials) sshAuth(ep *transport.Endpoint, dir string) (transport.AuthMethod, error) {
	if len(c.SSHKey) == 0 {
		return nil, errors.New("ssh needs a private key (identity file or " + EnvSSHKey + ")")
	}
	user := ep.User
	if user == "" {
		user = c.SSHUser
	}
	if user == "" {
		user = "git"
	}
	keys, err := gogitssh.NewPublicKeys(user, c.SSHKey, c.Password)
	if err != nil {
		// go-git's message says what is wrong with the key; the key itself is not in it.
		return nil, fmt.Errorf("parse ssh private key: %w", err)
	}
	if c.InsecureIgnoreHostKey {
		keys.HostKeyCallback = insecureIgnoreHostKey()
		return keys, nil
	}
	var files []string
	if len(c.KnownHosts) > 0 {
		sum := sha256.Sum256(c.KnownHosts)
		p := filepath.Join(dir, "known_hosts-"+hex.EncodeToString(sum[:8]))
		if err := os.WriteFile(p, c.KnownHosts, 0o600); err != nil {
			return nil, fmt.Errorf("write known_hosts: %w", err)
		}
		files = append(files, p)
	}
	db, err := gogitssh.NewKnownHostsDb(files...)
	if err != nil {
		return nil, fmt.Errorf("load known_hosts: %w", err)
	}
	keys.HostKeyCallback = db.HostKeyCallback()
	port := ep.Port
	if port == 0 {
		port = 22
	}
	keys.HostKeyAlgorithms = db.HostKeyAlgorithms(fmt.Sprintf("%s:%d", ep.Host, port))
	return keys, nil
}

// equal tells whether c and o authenticate the same way.
func (c Credentials) equal(o Credentials) bool {
	return c.Username == o.Username && c.Password == o.Password && c.BearerToken == o.BearerToken &&
		bytes.Equal(c.SSHKey, o.SSHKey) && c.SSHUser == o.SSHUser && bytes.Equal(c.KnownHosts, o.KnownHosts) &&
		c.InsecureIgnoreHostKey == o.InsecureIgnoreHostKey
}

// anonymous tells whether c holds nothing to authenticate over https with.
func (c Credentials) anonymous() bool {
	return c.Username == "" && c.Password == "" && c.BearerToken == ""
}

// setCredentials makes c the credentials of every request from now on; the user info of the
// URL stands in while c has none. Its secrets are scrubbed from everything the source prints.
func (s *Source) setCredentials(c Credentials) error {
	s.redact.add(c.secrets()...)
	use := c
	if use.anonymous() && len(use.SSHKey) == 0 {
		use.Username, use.Password = s.urlCreds.Username, s.urlCreds.Password
	}
	auth, err := use.authMethod(s.ep, s.opts.CacheDir)
	if err != nil {
		return err
	}
	s.authMu.Lock()
	defer s.authMu.Unlock()
	s.auth, s.creds = auth, c
	return nil
}

// authMethod returns the auth of the next request to the remote.
func (s *Source) authMethod() transport.AuthMethod {
	s.authMu.Lock()
	defer s.authMu.Unlock()
	return s.auth
}

// credentialsSettle is how long the credentials directory must be quiet before it is read
// again: a Secret volume update is several renames, and a file written in place several
// writes.
const credentialsSettle = 100 * time.Millisecond

// watchCredentials reads CredentialsDir again after each change until ctx is done, and uses
// what changed from the next request on. It watches the directory itself, not its files:
// Kubernetes updates a Secret volume by pointing the "..data" symlink at a new directory,
// which no watch of the old files would see.
func (s *Source) watchCredentials(ctx context.Context) {
	dir := s.opts.CredentialsDir
	fsw, err := fsnotify.NewWatcher()
	if err == nil {
		err = fsw.Add(dir)
		if err != nil {
			_ = fsw.Close()
		}
	}
	if err != nil {
		s.log.Warn("cannot watch the git credentials; a change needs a restart", "dir", dir, "err", s.redact.redact(err.Error()))
		return
	}
	defer fsw.Close()
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-fsw.Events:
			if !ok {
				return
			}
			settle = time.After(credentialsSettle)
		case err, ok := <-fsw.Errors:
			if !ok {
				return
			}
			s.log.Warn("watch git credentials", "dir", dir, "err", s.redact.redact(err.Error()))
		case <-settle:
			settle = nil
			s.reloadCredentials()
		}
	}
}

// reloadCredentials reads CredentialsDir and, when the credentials changed, uses them from
// the next request on and polls at once: a poll that failed on the old ones need not wait
// out its back-off. An unreadable or unusable directory keeps the credentials in use.
func (s *Source) reloadCredentials() {
	dir := s.opts.CredentialsDir
	c, err := CredentialsFromDir(dir)
	if err != nil {
		s.log.Warn("read rotated git credentials; keeping those in use", "dir", dir, "err", s.redact.redact(err.Error()))
		return
	}
	s.authMu.Lock()
	same := s.creds.equal(c)
	s.authMu.Unlock()
	if same {
		return
	}
	if err := s.setCredentials(c); err != nil {
		s.log.Warn("use rotated git credentials; keeping those in use", "dir", dir, "err", s.redact.redact(err.Error()))
		return
	}
	s.log.Info("git credentials changed; the next request uses them", "dir", dir, "credentials", c)
	s.metrics.credentialReloads.WithLabelValues(s.opts.Name).Inc()
	s.Trigger()
}
