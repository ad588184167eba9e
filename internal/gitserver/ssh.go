package gitserver

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// SSHServer serves the bare repositories of a Server's root over ssh, the way a Git host does:
// it runs `git-upload-pack` (fetch) or `git-receive-pack` (push) for a client whose public key
// is authorized, and nothing else.
type SSHServer struct {
	// Root holds the bare repositories, one "<name>.git" directory each.
	Root string
	// HostKey is the server's public host key, for the client's known_hosts.
	HostKey gossh.PublicKey

	authorized gossh.PublicKey
	listener   net.Listener
	srv        *gliderssh.Server

	mu       sync.Mutex
	sessions int
}

// NewSSH serves the bare repositories under root over ssh on a loopback port, to the holder of
// the private key matching authorized. It makes a fresh ed25519 host key.
func NewSSH(root string, authorized gossh.PublicKey) (*SSHServer, error) {
	hostSigner, _, err := NewSSHKey()
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("ssh git server listen: %w", err)
	}
	s := &SSHServer{Root: root, HostKey: hostSigner.PublicKey(), authorized: authorized, listener: l}
	s.srv = &gliderssh.Server{
		Handler: s.handle,
		PublicKeyHandler: func(_ gliderssh.Context, key gliderssh.PublicKey) bool {
			return gliderssh.KeysEqual(key, s.authorized)
		},
	}
	s.srv.AddHostKey(hostSigner)
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

// Addr returns the server's "host:port".
func (s *SSHServer) Addr() string { return s.listener.Addr().String() }

// URL returns the ssh clone URL of repository name, for user git.
func (s *SSHServer) URL(name string) string {
	return "ssh://git@" + s.Addr() + "/" + name + ".git"
}

// KnownHosts returns a known_hosts line naming this server and its host key.
func (s *SSHServer) KnownHosts() string {
	return fmt.Sprintf("[127.0.0.1]:%d %s", s.listener.Addr().(*net.TCPAddr).Port,
		strings.TrimSpace(string(gossh.MarshalAuthorizedKey(s.HostKey))))
}

// Sessions returns how many git sessions the server has run.
func (s *SSHServer) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

// Close stops the server and drops open connections.
func (s *SSHServer) Close() error { return s.srv.Close() }

// handle runs the one git service the client asked for, confined to Root.
func (s *SSHServer) handle(sess gliderssh.Session) {
	s.mu.Lock()
	s.sessions++
	s.mu.Unlock()
	args := sess.Command()
	if len(args) != 2 || (args[0] != "git-upload-pack" && args[0] != "git-receive-pack") {
		fmt.Fprintf(sess.Stderr(), "only git-upload-pack and git-receive-pack are served\n")
		_ = sess.Exit(1)
		return
	}
	dir, err := s.repoDir(args[1])
	if err != nil {
		fmt.Fprintf(sess.Stderr(), "%v\n", err)
		_ = sess.Exit(1)
		return
	}
	cmd := exec.CommandContext(sess.Context(), "git", strings.TrimPrefix(args[0], "git-"), dir)
	cmd.Env = []string{"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1", "PATH=/usr/bin:/bin:/usr/local/bin"}
	cmd.Stdout, cmd.Stderr = sess, sess.Stderr()
	// Copy stdin ourselves: with cmd.Stdin = sess, Wait would wait for a copy that only ends
	// when the client closes its side, and the git CLI waits for the exit status first.
	stdin, err := cmd.StdinPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		fmt.Fprintf(sess.Stderr(), "start %s: %v\n", args[0], err)
		_ = sess.Exit(1)
		return
	}
	go func() {
		_, _ = io.Copy(stdin, sess)
		_ = stdin.Close()
	}()
	code := 0
	if err := cmd.Wait(); err != nil {
		code = 1
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		}
	}
	_ = sess.Exit(code)
}

// repoDir maps the path the client asked for ("/name.git", "name.git" or "~/name.git") to a
// repository under Root, refusing anything outside it.
func (s *SSHServer) repoDir(p string) (string, error) {
	p = strings.TrimPrefix(p, "~")
	clean := path.Clean("/" + p)
	if clean == "/" || !strings.HasSuffix(clean, ".git") {
		return "", fmt.Errorf("no repository %q", p)
	}
	return filepath.Join(s.Root, filepath.FromSlash(clean)), nil
}

// NewSSHKey makes an ed25519 key pair and returns its signer and the private key in OpenSSH PEM
// form, as a client would read it from a mounted Secret.
func NewSSHKey() (gossh.Signer, []byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate ssh key: %w", err)
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, nil, fmt.Errorf("ssh signer: %w", err)
	}
	block, err := gossh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, nil, fmt.Errorf("marshal ssh key: %w", err)
	}
	return signer, pem.EncodeToMemory(block), nil
}
