package reconciler

import (
	"testing"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestHistoryNumbersEveryChangeOnce(t *testing.T) {
	var s ExecutionStatus
	now := metav1.Now()
	for _, p := range []Status{Running, Running, Waiting, Running, RollingBack} {
		s.Phase = p
		s.recordChange(now)
	}
	require.Len(t, s.History, 4, "a repeated status with the same comment is one change")
	for i, c := range s.History {
		require.Equal(t, i+1, c.Seq)
	}
	require.Equal(t, RollingBack, s.History[3].Phase)

	for i := 0; i < 2*historyLimit; i++ {
		s.Phase, s.Comment = Waiting, "attempt "+string(rune('a'+i%26))+string(rune('a'+i/26))
		s.recordChange(now)
	}
	require.Len(t, s.History, historyLimit)
	require.Equal(t, 4+2*historyLimit, s.History[historyLimit-1].Seq, "numbers keep counting past the limit")
}
