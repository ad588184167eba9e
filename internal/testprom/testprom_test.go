package testprom

import (
	"context"
	"net"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ebb.dev/ebb/internal/proc"
)

// TestStartScrapesAndStopLeavesNothing starts a server scraping an exporter, waits for the
// exporter's series, and proves that Stop ends the process and frees the port.
func TestStartScrapesAndStopLeavesNothing(t *testing.T) {
	reg := prometheus.NewRegistry()
	gauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: "ebb_testprom_value", Help: "A value the test sets."})
	reg.MustRegister(gauge)
	gauge.Set(42)
	exporter := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer exporter.Close()
	target, err := url.Parse(exporter.URL)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, Options{Targets: []string{target.Host}})
	require.NoError(t, err)
	require.NoError(t, s.WaitForSamples(ctx, "ebb_testprom_value == 42", 1), s.LogTail(20))
	running, err := proc.ProcessesUsing(s.Dir)
	require.NoError(t, err)
	require.NotEmpty(t, running, "prometheus is not found by its directory")

	require.NoError(t, s.Stop())
	running, err = proc.ProcessesUsing(s.Dir)
	require.NoError(t, err)
	assert.Empty(t, running, "prometheus still runs after Stop")
	_, err = net.DialTimeout("tcp", s.URL[len("http://"):], time.Second)
	assert.Error(t, err, "something still listens on %s", s.URL)
	_, err = os.Stat(s.Dir)
	assert.True(t, os.IsNotExist(err), "%s was not removed", s.Dir)
	require.NoError(t, s.Stop(), "a second Stop")
}

// TestStartWithoutBinary names the make target that installs Prometheus.
func TestStartWithoutBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	saved := debianBinary
	debianBinary = filepath.Join(t.TempDir(), "prometheus")
	t.Cleanup(func() { debianBinary = saved })

	_, err := Start(context.Background(), Options{})
	require.ErrorContains(t, err, "prometheus is missing; run `make prometheus`")
}
