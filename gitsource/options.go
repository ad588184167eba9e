package gitsource

import (
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Options configure a Source. Start from DefaultOptions and set URL, a Branch or a Tag, and
// CacheDir.
type Options struct {
	// URL of the repository: https://, http://, ssh://, user@host:path (scp-like ssh),
	// file:// or a local path. Userinfo in an https URL is taken as basic auth credentials and
	// removed from the URL; prefer Credentials.
	URL string
	// Branch to follow. Exactly one of Branch and Tag is set.
	Branch string
	// Tag to follow, for a source pinned to a release.
	Tag string
	// Path is the directory inside the repository whose files a Snapshot exposes ("" or "."
	// for the whole repository).
	Path string
	// CacheDir holds the local clone, one directory per URL and ref; it survives restarts
	// when it is on a volume.
	CacheDir string
	// Credentials authenticate to the remote.
	Credentials Credentials
	// CredentialsDir, when set, replaces Credentials with the files of this directory (a
	// mounted Secret, read by CredentialsFromDir). Run watches it and uses changed files from
	// the next request on, so rotated credentials need no restart.
	CredentialsDir string
	// Name labels the source's metrics and logs. Default: the repository name from the URL.
	Name string

	// Interval between polls when nothing triggers one.
	Interval time.Duration
	// Debounce is how long Run waits after a trigger for more triggers before it polls, so a
	// burst (several webhooks, several ref files written by one push) costs one poll.
	Debounce time.Duration
	// MinBackoff and MaxBackoff bound the wait after failed polls: it doubles from MinBackoff
	// with each consecutive failure up to MaxBackoff, with ±20% jitter so many daemons do
	// not retry in step.
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds each network operation (ls-remote, fetch).
	Timeout time.Duration
	// ObjectCacheBytes bounds the in-memory cache of decoded Git objects.
	ObjectCacheBytes int64
	// Depth, when positive, keeps only that many commits of history below each fetched head
	// (a shallow clone, as git clone --depth). The first clone of a long history is what
	// costs memory: go-git's pack parser keeps up to 96 MiB of delta bases while it indexes
	// the pack. A shallow clone bounds that; IsAncestor and SnapshotAt then see only the
	// fetched history (SnapshotAt fetches an older commit by SHA when the server allows it).
	// 0 fetches the whole history. The default, 500, keeps the first clone of a repository
	// of 1,000 pipelines under 40 MiB while leaving far more history than a rollback needs.
	Depth int

	// Logger receives the source's logs; it gets a "component"="gitsource" child. Nil
	// discards them.
	Logger *slog.Logger
	// Registerer receives the source's metrics. Nil registers nothing. Several sources may
	// share one Registerer; they are told apart by the "source" label.
	Registerer prometheus.Registerer
}

// DefaultOptions returns Options with the timings and limits ebb runs with.
func DefaultOptions() Options {
	return Options{
		Interval:         30 * time.Second,
		Debounce:         20 * time.Millisecond,
		MinBackoff:       time.Second,
		MaxBackoff:       5 * time.Minute,
		Timeout:          time.Minute,
		ObjectCacheBytes: 8 << 20,
		Depth:            500,
	}
}

// validate checks the options and fills in what can be derived.
func (o *Options) validate() error {
	var errs []error
	if o.URL == "" {
		errs = append(errs, errors.New("URL is required"))
	}
	if (o.Branch == "") == (o.Tag == "") {
		errs = append(errs, errors.New("exactly one of Branch and Tag is required"))
	}
	if o.CacheDir == "" {
		errs = append(errs, errors.New("CacheDir is required"))
	}
	clean := path.Clean(strings.Trim(o.Path, "/"))
	switch {
	case clean == "..", strings.HasPrefix(clean, "../"):
		errs = append(errs, fmt.Errorf("path %q must stay inside the repository", o.Path))
	case clean == ".":
		clean = ""
	}
	o.Path = clean
	if o.Interval <= 0 || o.MinBackoff <= 0 || o.MaxBackoff < o.MinBackoff || o.Timeout <= 0 {
		errs = append(errs, errors.New("Interval, MinBackoff, Timeout must be positive and MaxBackoff at least MinBackoff (start from DefaultOptions)"))
	}
	if o.Depth < 0 {
		errs = append(errs, errors.New("Depth must not be negative"))
	}
	if o.Debounce < 0 {
		errs = append(errs, errors.New("Debounce must not be negative"))
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return errors.Join(errs...)
}

// refNames returns the ref on the remote and where the cache keeps it.
func (o *Options) refNames() (remote, local string) {
	if o.Tag != "" {
		r := "refs/tags/" + o.Tag
		return r, r
	}
	return "refs/heads/" + o.Branch, "refs/remotes/origin/" + o.Branch
}

// defaultName derives a metric label from a URL: its last path element without ".git".
func defaultName(rawURL string) string {
	u := strings.TrimRight(rawURL, "/")
	if i := strings.LastIndexAny(u, "/:"); i >= 0 {
		u = u[i+1:]
	}
	u = strings.TrimSuffix(u, ".git")
	if u == "" {
		return "repo"
	}
	return u
}
