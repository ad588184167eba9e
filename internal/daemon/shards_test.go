package daemon

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestShardOfSpreadsPipelines(t *testing.T) {
	const shards, pipelines = 3, 3000
	count := make([]int, shards)
	for i := range pipelines {
		name := fmt.Sprintf("app-%04d", i)
		s := ShardOf(name, shards)
		assert.Equal(t, s, ShardOf(name, shards), "not stable")
		count[s]++
	}
	for i, n := range count {
		assert.InDelta(t, pipelines/shards, n, pipelines/shards/10, "shard %d holds %d of %d", i, n, pipelines)
	}
	assert.Equal(t, 0, ShardOf("anything", 1))
	assert.Equal(t, LeaderLease, ShardLease(0, 1))
	assert.Equal(t, "ebb-shard-2-of-3", ShardLease(2, 3))
}

func TestMemberLeaseNameIsAName(t *testing.T) {
	for _, id := range []string{"ebb-7d9f8-abcde", "Replica_A", "host.example.com", "-x-", "___", string(make([]byte, 300)) + "a", strings.Repeat("a.", 200)} {
		name := memberLeaseName(id)
		assert.Empty(t, validation.IsDNS1123Subdomain(name), "%q -> %q", id, name)
	}
	assert.NotEqual(t, memberLeaseName("a"+string(make([]byte, 300))), memberLeaseName("b"+string(make([]byte, 300))))
}
