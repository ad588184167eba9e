// Package testbin pins the versions of the test-cluster binaries; see ../build.sh.
package testbin
