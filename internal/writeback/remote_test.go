package writeback

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"

	"ebb.dev/ebb/internal/gitserver"
)

// TestCheckRemote: a local work tree is refused (its checked-out files would fall behind the
// branch); a bare repository and a remote URL are written to.
func TestCheckRemote(t *testing.T) {
	work, err := gitserver.Init(filepath.Join(t.TempDir(), "work"))
	if err != nil {
		t.Fatal(err)
	}
	bare := filepath.Join(t.TempDir(), "bare.git")
	if _, err := gitserver.Git("", "init", "--bare", bare); err != nil {
		t.Fatal(err)
	}
	err = checkRemote("file://" + work.Dir)
	var perm *permanentError
	assert.ErrorAs(t, err, &perm)
	assert.EqualError(t, err, "the repository "+work.Dir+" is a work tree: write-back pushes to a bare repository or a remote")
	assert.NoError(t, checkRemote("file://"+bare))
	assert.NoError(t, checkRemote(bare))
	assert.NoError(t, checkRemote("https://git.example.com/team/repo.git"))
}
