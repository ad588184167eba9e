// Package gitsource is ebb's only input: it follows one branch or tag of a Git repository and
// hands out immutable snapshots of the files under a path.
//
// A Source keeps one bare clone per repository in a cache directory and polls cheaply: it asks
// the remote for the head first (one round trip, no objects) and fetches incrementally only when
// the head moved. It survives force-pushes, deleted branches, a corrupt cache and a remote that
// is down, and always keeps serving the last good snapshot. Webhooks (GitHub, GitLab, Gitea,
// Bitbucket) and an fsnotify watch of local repositories make it poll at once.
//
// Snapshots read files straight from Git tree objects through an io/fs.FS that also implements
// io/fs.ReadLinkFS, so symlinks are visible to the planner, which decides what to do with them.
// Credentials never leave the transport: they are kept out of errors, logs, metric labels and
// printed URLs.
package gitsource
