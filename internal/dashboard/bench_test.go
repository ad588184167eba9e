package dashboard

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"

	"ebb.dev/ebb/reconciler"
)

// manyExecutions writes n finished executions, as the reconciler records them (two stages of
// three tasks, a status history, a comment), over 50 pipelines, in ns. It writes them straight
// through the API (create, then status), eight at a time: Store.CreateExecution lists a
// pipeline's executions to number each one, which is right for a daemon and slow for 2,000.
func manyExecutions(b *testing.B, ns string, n int) {
	b.Helper()
	ctx := context.Background()
	res := dynamic.NewForConfigOrDie(cluster.Config).Resource(reconciler.ExecutionResource).Namespace(ns)
	base := time.Now().Add(-time.Duration(n) * time.Minute).Truncate(time.Second)
	work := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				errs <- writeExecution(ctx, res, ns, i, base.Add(time.Duration(i)*time.Minute))
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(b, err)
	}
}

func writeExecution(ctx context.Context, res dynamic.ResourceInterface, ns string, i int, start time.Time) error {
	pipeline, number := fmt.Sprintf("app-%02d", i%50), i/50+1
	at := func(d time.Duration) *metav1.Time { t := metav1.NewTime(start.Add(d)); return &t }
	tasks := func(from time.Duration) []reconciler.TaskRecord {
		return []reconciler.TaskRecord{
			{Name: reconciler.TaskCreateResources, Status: reconciler.Completed, StartedAt: at(from), FinishedAt: at(from + time.Second)},
			{Name: reconciler.TaskUpdateDeployment, Status: reconciler.Completed, StartedAt: at(from + time.Second), FinishedAt: at(from + 2*time.Second)},
			{Name: reconciler.TaskVerifyDeployment, Status: reconciler.Completed, StartedAt: at(from + 2*time.Second), FinishedAt: at(from + 20*time.Second)},
		}
	}
	x := &reconciler.Execution{
		Spec: reconciler.ExecutionSpec{DisplayName: reconciler.DisplayName(pipeline, number), Pipeline: pipeline, Number: number, Kind: reconciler.KindDeploy,
			Commit: fmt.Sprintf("%040x", i), ShortCommit: fmt.Sprintf("%07x", i), CommitMessage: fmt.Sprintf("%s: release 1.%d with a message of ordinary length", pipeline, number)},
		Status: reconciler.ExecutionStatus{Phase: reconciler.Completed, Stage: "prod", Image: fmt.Sprintf("registry.example/%s:1.%d", pipeline, number),
			Comment:   "verified in dev and prod",
			StartedAt: at(0), FinishedAt: at(45 * time.Second),
			Stages: []reconciler.StageRecord{
				{Name: "dev", Status: reconciler.Completed, StartedAt: at(0), FinishedAt: at(20 * time.Second), Tasks: tasks(0)},
				{Name: "prod", Status: reconciler.Completed, StartedAt: at(22 * time.Second), FinishedAt: at(42 * time.Second), Tasks: tasks(22 * time.Second)},
			},
			History: []reconciler.PhaseChange{{Seq: 1, Phase: reconciler.Running, Stage: "dev", At: *at(0)}, {Seq: 2, Phase: reconciler.Completed, Stage: "prod", At: *at(45 * time.Second)}},
		},
	}
	x.APIVersion, x.Kind = reconciler.Group+"/"+reconciler.Version, "Execution"
	x.Name, x.Namespace = reconciler.ObjectName(x.Spec.DisplayName), ns
	x.Labels = map[string]string{reconciler.LabelPipeline: pipeline, reconciler.LabelKind: string(reconciler.KindDeploy)}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(x)
	if err != nil {
		return err
	}
	created, err := res.Create(ctx, &unstructured.Unstructured{Object: m}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	created.Object["status"] = m["status"]
	_, err = res.UpdateStatus(ctx, created, metav1.UpdateOptions{})
	return err
}

// BenchmarkExecutionsPage2000 serves the executions view over 2,000 executions, as a browser
// asks for it (gzip accepted): the time to the first byte of the response, and the page's
// weight on the wire and as HTML, for the default page (the newest 200) and for all 2,000
// (?limit=2000).
func BenchmarkExecutionsPage2000(b *testing.B) {
	ns := namespace(b)
	manyExecutions(b, ns, 2000)
	base := serve(b, cluster.Config, ns, false)
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	for _, page := range []struct{ name, query string }{{"newest200", "/"}, {"all2000", "/?limit=2000"}} {
		b.Run(page.name, func(b *testing.B) {
			var ttfb time.Duration
			var wire, html int64
			for b.Loop() {
				var sent, first time.Time
				trace := &httptrace.ClientTrace{
					WroteRequest:         func(httptrace.WroteRequestInfo) { sent = time.Now() },
					GotFirstResponseByte: func() { first = time.Now() },
				}
				req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, base+page.query, nil)
				require.NoError(b, err)
				req.Header.Set("Accept-Encoding", "gzip")
				resp, err := client.Do(req)
				require.NoError(b, err)
				require.Equal(b, http.StatusOK, resp.StatusCode)
				require.Equal(b, "gzip", resp.Header.Get("Content-Encoding"))
				counted := &countingReader{r: resp.Body}
				gz, err := gzip.NewReader(counted)
				require.NoError(b, err)
				n, err := io.Copy(io.Discard, gz)
				require.NoError(b, err)
				resp.Body.Close()
				ttfb += first.Sub(sent)
				wire, html = counted.n, n
			}
			b.ReportMetric(float64(ttfb.Microseconds())/1000/float64(b.N), "ms-ttfb/op")
			b.ReportMetric(float64(wire)/1024, "KiB-gzip/page")
			b.ReportMetric(float64(html)/1024, "KiB-html/page")
		})
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// BenchmarkStatusToOpenPage measures how long a status change takes from the reconciler's
// write (Store.UpdateExecution) to an open page: to the event on the list's stream, and to
// the row in a real Chromium's DOM. Each op is one status change.
func BenchmarkStatusToOpenPage(b *testing.B) {
	ns := namespace(b)
	manyExecutions(b, ns, 2000)
	store := reconciler.NewStore(dynamic.NewForConfigOrDie(cluster.Config), ns)
	x, err := store.GetExecution(context.Background(), "app-07-40")
	require.NoError(b, err)
	base := serve(b, cluster.Config, ns, false)
	phases := []reconciler.Status{reconciler.Running, reconciler.RollingBack, reconciler.RollbackCompleted}
	change := func(i int) reconciler.Status {
		p := phases[i%len(phases)]
		x.Status.Phase = p
		x.Status.History = append(x.Status.History, reconciler.PhaseChange{Seq: len(x.Status.History) + 1, Phase: p, Stage: "prod", At: metav1.Now()})
		require.NoError(b, store.UpdateExecution(context.Background(), x))
		return p
	}

	b.Run("event-stream", func(b *testing.B) {
		stream := events(b, base+"/events?view=list")
		i := 0
		for b.Loop() {
			want := change(i)
			i++
			for {
				ev := next(b, stream)
				if ev.data["id"] == "x-"+x.Name && ev.data["phase"] == string(want) {
					break
				}
			}
		}
	})

	b.Run("chromium", func(b *testing.B) {
		ctx := browser(b)
		do(b, ctx, 60*time.Second, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#live.on")))
		i := 0
		for b.Loop() {
			want := change(i)
			i++
			do(b, ctx, 20*time.Second, chromedp.WaitReady(chromedp.CSS(fmt.Sprintf(`#x-%s[data-phase="%s"]`, x.Name, want)), chromedp.RetryInterval(time.Millisecond)))
		}
	})
}
