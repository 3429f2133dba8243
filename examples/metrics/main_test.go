package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The faults the tests inject: odd numbers, so that a figure that counts
// something else is unlikely to match by chance.
const (
	testRecords         = 240
	testRedeliveries    = 17
	testHandlerFailures = 5
	testLostAcks        = 3
)

// wait bounds every wait of the tests.
const wait = 90 * time.Second

// example is the example running in this process, serving on addr.
type example struct {
	addr    string
	figures Figures
	out     *syncBuffer
	stop    func() error // cancels it and returns what run returned
}

// startExample runs the example with --once on an embedded cluster, serving
// on ln (a new loopback listener if nil), and returns once the round's
// figures are printed. The example is stopped when the test ends.
func startExample(t *testing.T, ln net.Listener) *example {
	t.Helper()
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	figures := make(chan Figures, 1)
	cfg := config{once: true, records: testRecords, redeliveries: testRedeliveries,
		handlerFailures: testHandlerFailures, lostAcks: testLostAcks,
		afterRound: func(f Figures) { figures <- f }}
	ctx, cancel := context.WithCancel(context.Background())
	ex := &example{addr: ln.Addr().String(), out: &syncBuffer{}}
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, ln, ex.out) }()
	var once sync.Once
	var runErr error
	ex.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(wait):
				runErr = fmt.Errorf("run did not return within %s of its cancel", wait)
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := ex.stop(); err != nil {
			t.Errorf("run returned %v after its cancel, want nil", err)
		}
		if t.Failed() {
			t.Logf("the example printed:\n%s", ex.out.String())
		}
	})
	select {
	case ex.figures = <-figures:
	case err := <-done:
		done <- err // for stop
		t.Fatalf("run returned before its round's figures: %v\n%s", err, ex.out.String())
	case <-time.After(wait):
		t.Fatalf("no figures within %s:\n%s", wait, ex.out.String())
	}
	return ex
}

// TestOnceFigures: one round of faults makes the figures the faults imply,
// in the clients' Stats and on /metrics alike, and a cancel stops the
// example cleanly (run returns nil).
func TestOnceFigures(t *testing.T) {
	ex := startExample(t, nil)
	f := ex.figures
	checks := []struct {
		what      string
		got, want int64
	}{
		{"records redelivered by the crash", int64(f.Redeliveries), testRedeliveries},
		{"guard duplicates (Stats)", f.Guard.Duplicates, testRedeliveries},
		{"consumer duplicates (Stats)", f.Consumer.Duplicates, testRedeliveries},
		{"side effects repeated", int64(f.Repeated), 0},
		{"eos aborts by the handler (Stats)", f.Session.AbortedHandler, testHandlerFailures},
		{"eos records copied (Stats)", f.Session.Records, testRecords},
		{"producer delivered (Stats)", f.Producer.Delivered, testRecords},
		{"producer failed (Stats)", f.Producer.Failed, 0},
		{"produce requests faulted", int64(f.FaultedProduces), testLostAcks},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.what, c.got, c.want)
		}
	}
	if lag := f.Consumer.Lag; len(lag) != 1 {
		t.Errorf("lag of %d topics, want 1: %v", len(lag), lag)
	} else {
		for _, ps := range lag {
			if len(ps) != partitions {
				t.Errorf("lag of %d partitions, want %d: %v", len(ps), partitions, ps)
			}
			for p, l := range ps {
				if l != 0 {
					t.Errorf("partition %d: lag %d, want 0", p, l)
				}
			}
		}
	}

	series := scrape(t, ex.addr)
	for _, c := range []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"kdeliver_consumer_records_total", map[string]string{"kdeliver_outcome": "duplicate"}, testRedeliveries},
		{"kdeliver_eos_transactions_total", map[string]string{"kdeliver_outcome": "aborted", "kdeliver_cause": "handler"}, testHandlerFailures},
		{"kdeliver_producer_records_total", map[string]string{"kdeliver_outcome": "delivered"}, testRecords},
		{"kdeliver_producer_records_total", map[string]string{"kdeliver_outcome": "failed"}, 0},
	} {
		if got, n := series.sum(c.metric, c.labels); n == 0 || got != c.want {
			t.Errorf("/metrics: %s%v = %v over %d series, want %v", c.metric, c.labels, got, n, c.want)
		}
	}
	for p := range partitions {
		labels := map[string]string{"messaging_destination_partition_id": strconv.Itoa(p)}
		if got, n := series.sum("kdeliver_consumer_lag", labels); n != 1 || got != 0 {
			t.Errorf("/metrics: kdeliver_consumer_lag%v = %v over %d series, want 0 over 1", labels, got, n)
		}
	}
	if err := ex.stop(); err != nil {
		t.Fatalf("run returned %v after its cancel, want nil", err)
	}
	if !strings.Contains(ex.out.String(), fmt.Sprintf("crashed with %d records handled and not committed", testRedeliveries)) {
		t.Errorf("the figures printed do not name the redeliveries:\n%s", ex.out.String())
	}
}

// TestFlags: the flags' defaults, and every invalid value reported at once.
func TestFlags(t *testing.T) {
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.listen != "127.0.0.1:9464" || cfg.once || cfg.brokers != nil || cfg.redeliveries >= cfg.records {
		t.Errorf("defaults: %+v", cfg)
	}
	_, err = parseFlags([]string{"--records", "10", "--redeliveries", "10", "--handler-failures", "11", "--lost-acks", "-1"}, io.Discard)
	if err == nil {
		t.Fatal("no error for invalid flags")
	}
	for _, want := range []string{"--redeliveries 10", "--handler-failures 11", "--lost-acks -1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	cfg, err = parseFlags([]string{"--once", "--serve-for", "3s", "--brokers", "a:9092, b:9092"}, io.Discard)
	if err != nil || !cfg.once || cfg.serveFor != 3*time.Second || len(cfg.brokers) != 2 {
		t.Errorf("parsed %+v, %v", cfg, err)
	}
}

// TestDashboard: grafana-dashboard.json parses, every query of every panel
// names only series the example exports, and every kdeliver series the
// example exports is on some panel.
func TestDashboard(t *testing.T) {
	all := dashboardPanels(t)

	page := scrape(t, startExample(t, nil).addr)
	exported, labels := page.names(), page.labelNames()
	ident := regexp.MustCompile(`\bkdeliver_[a-z0-9_]+`)
	by := regexp.MustCompile(`\bby \(([^)]*)\)`)
	ids := map[int]bool{}
	used := map[string]bool{}
	titles := map[string]bool{}
	for _, p := range all {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		titles[p.Title] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			metrics := 0
			for _, n := range ident.FindAllString(tg.Expr, -1) {
				switch {
				case exported[n]:
					used[n] = true
					metrics++
				case !labels[n]:
					t.Errorf("panel %q, query %s: %s is neither a series nor a label the example exports", p.Title, tg.RefID, n)
				}
			}
			if metrics == 0 {
				t.Errorf("panel %q, query %s: names no kdeliver series: %s", p.Title, tg.RefID, tg.Expr)
			}
			for _, m := range by.FindAllStringSubmatch(tg.Expr, -1) {
				for _, l := range strings.Split(m[1], ",") {
					if l = strings.TrimSpace(l); !labels[l] {
						t.Errorf("panel %q, query %s: groups by %s, a label the example does not export", p.Title, tg.RefID, l)
					}
				}
			}
		}
	}
	for n := range exported {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
		if strings.HasPrefix(n, "kdeliver_") && !used[n] && !used[base+"_bucket"] {
			t.Errorf("%s is exported but on no panel", n)
		}
	}
	for _, want := range []string{"Records by outcome", "Duplicates absorbed", "Handler failures and retries", "Commits", "Commit duration",
		"Consumer lag per partition", "In flight", "Transactions by outcome and cause", "Transaction duration", "Producer deliveries", "Hanging transactions"} {
		if !titles[want] {
			t.Errorf("no panel %q", want)
		}
	}
}

// panel is a Grafana panel of grafana-dashboard.json, with its queries.
type panel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

// dashboardPanels parses grafana-dashboard.json and returns its panels,
// those inside rows too.
func dashboardPanels(t *testing.T) []panel {
	t.Helper()
	raw, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string  `json:"title"`
		UID    string  `json:"uid"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Errorf("the dashboard has no title or uid")
	}
	var all []panel
	var flatten func([]panel)
	flatten = func(ps []panel) {
		for _, p := range ps {
			all = append(all, p)
			flatten(p.Panels)
		}
	}
	flatten(dash.Panels)
	return all
}

// TestPrometheus starts Prometheus (Debian's package) on 127.0.0.1 with a
// configuration that scrapes the example every second, lets the example
// inject its faults, and checks through Prometheus's HTTP API that the
// duplicate series equals the records redelivered, the handler aborts the
// handler failures injected, and each partition's lag reaches 0. Without a
// prometheus binary it is skipped, unless KDELIVER_REQUIRE_PROMETHEUS=1
// (CI) makes that a failure.
func TestPrometheus(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("KDELIVER_REQUIRE_PROMETHEUS") == "1" {
			t.Fatal("no prometheus binary on PATH but KDELIVER_REQUIRE_PROMETHEUS=1: install Debian's package (apt-get install prometheus; .ci/run does)")
		}
		t.Skip("no prometheus binary on PATH: install Debian's package (apt-get install prometheus), or set KDELIVER_REQUIRE_PROMETHEUS=1 to make this a failure")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	prom := startPrometheus(t, bin, ln.Addr().String())
	ex := startExample(t, ln)
	scraped := time.Now()

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	dups := `kdeliver_consumer_records_total{kdeliver_outcome="duplicate"}`
	// A scrape that began after the figures were final.
	prom.waitFor(ctx, t, "a scrape after the round", func() (bool, string) {
		s, err := prom.query(ctx, "max(timestamp("+dups+"))")
		if err != nil || len(s) != 1 {
			return false, fmt.Sprintf("%v %v", s, err)
		}
		return s[0].value >= float64(scraped.UnixMilli())/1000, fmt.Sprint(s)
	})
	for _, c := range []struct {
		query string
		want  float64
	}{
		{"sum(" + dups + ")", testRedeliveries},
		{`sum(kdeliver_eos_transactions_total{kdeliver_outcome="aborted",kdeliver_cause="handler"})`, testHandlerFailures},
		{`sum(kdeliver_producer_records_total{kdeliver_outcome="delivered"})`, testRecords},
		{`sum(kdeliver_producer_records_total{kdeliver_outcome="failed"})`, 0},
	} {
		s, err := prom.query(ctx, c.query)
		if err != nil {
			t.Fatal(err)
		}
		if len(s) != 1 || s[0].value != c.want {
			t.Errorf("%s = %v, want %v", c.query, s, c.want)
		} else {
			t.Logf("%s = %v", c.query, s[0].value)
		}
	}
	if got := ex.figures.Guard.Duplicates; got != testRedeliveries {
		t.Errorf("the guard's Stats counted %d duplicates, want %d", got, testRedeliveries)
	}
	prom.waitFor(ctx, t, "lag 0 on every partition", func() (bool, string) {
		s, err := prom.query(ctx, "kdeliver_consumer_lag")
		if err != nil {
			return false, err.Error()
		}
		zero := map[string]bool{}
		for _, x := range s {
			zero[x.metric["messaging_destination_partition_id"]] = x.value == 0
		}
		return len(s) == partitions && zero["0"] && zero["1"] && zero["2"], fmt.Sprint(s)
	})
	t.Logf("kdeliver_consumer_lag: 0 on partitions 0, 1 and 2")

	// Every query of the dashboard is valid PromQL and finds data (a rate
	// once two scrapes have the series), with Grafana's rate interval set
	// to a minute.
	for _, p := range dashboardPanels(t) {
		for _, tg := range p.Targets {
			q := strings.ReplaceAll(tg.Expr, "$__rate_interval", "1m")
			prom.waitFor(ctx, t, fmt.Sprintf("panel %q, query %s: data", p.Title, tg.RefID), func() (bool, string) {
				s, err := prom.query(ctx, q)
				if err != nil {
					t.Fatalf("panel %q, query %s: %v", p.Title, tg.RefID, err)
				}
				return len(s) > 0, fmt.Sprintf("no data for %s", q)
			})
		}
	}
}

// promServer is a Prometheus server started by a test.
type promServer struct {
	base   string // http://127.0.0.1:port
	client *http.Client
	log    *syncBuffer
}

// startPrometheus starts bin on a free loopback port, with a temporary
// configuration that scrapes target every second and a temporary storage,
// and waits until it is ready. It is stopped when the test ends.
func startPrometheus(t *testing.T, bin, target string) *promServer {
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
scrape_configs:
  - job_name: kdeliver-example
    static_configs:
      - targets: ['%s']
`, target)), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	p := &promServer{base: "http://" + addr, client: &http.Client{Timeout: 10 * time.Second}, log: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin,
		"--config.file="+conf,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn")
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-exited
		p.client.CloseIdleConnections()
		if t.Failed() {
			t.Logf("prometheus logged:\n%s", p.log.String())
		}
	})
	deadline := time.Now().Add(wait)
	for {
		resp, err := p.client.Get(p.base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("prometheus exited before it was ready: %v\n%s", err, p.log.String())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready within %s: %v\n%s", wait, err, p.log.String())
		}
	}
}

type sample struct {
	metric map[string]string
	value  float64
}

func (s sample) String() string { return fmt.Sprintf("%v=%v", s.metric, s.value) }

// query runs an instant query through /api/v1/query.
func (p *promServer) query(ctx context.Context, q string) ([]sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("query %s: %v", q, err)
	}
	if body.Status != "success" || body.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query %s: status %s, result type %s: %s", q, body.Status, body.Data.ResultType, body.Error)
	}
	out := make([]sample, 0, len(body.Data.Result))
	for _, r := range body.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v: %v", q, r.Value, err)
		}
		out = append(out, sample{r.Metric, v})
	}
	return out, nil
}

// waitFor polls cond every 250ms until it holds, failing the test when ctx
// ends first; cond says what it saw.
func (p *promServer) waitFor(ctx context.Context, t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	var saw string
	for {
		var ok bool
		if ok, saw = cond(); ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %s; last saw %s", what, wait, saw)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// exposition is a /metrics page: every sample line's name, labels and value.
type exposition []struct {
	name   string
	labels map[string]string
	value  float64
}

// scrape reads the example's /metrics.
func scrape(t *testing.T, addr string) exposition {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out exposition
	label := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, labels := line, "", map[string]string{}
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if strings.HasPrefix(rest, "{") {
			end := strings.LastIndex(rest, "}")
			for _, m := range label.FindAllStringSubmatch(rest[1:end], -1) {
				labels[m[1]] = m[2]
			}
			rest = rest[end+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			t.Fatalf("/metrics line without a value: %s", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		out = append(out, struct {
			name   string
			labels map[string]string
			value  float64
		}{name, labels, v})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// sum adds up the values of metric's series that carry labels, and says
// how many there were.
func (e exposition) sum(metric string, labels map[string]string) (float64, int) {
	var total float64
	n := 0
next:
	for _, s := range e {
		if s.name != metric {
			continue
		}
		for k, v := range labels {
			if s.labels[k] != v {
				continue next
			}
		}
		total += s.value
		n++
	}
	return total, n
}

// names returns the sample names on the page.
func (e exposition) names() map[string]bool {
	out := map[string]bool{}
	for _, s := range e {
		out[s.name] = true
	}
	return out
}

// labelNames returns the label names of the kdeliver series on the page.
func (e exposition) labelNames() map[string]bool {
	out := map[string]bool{}
	for _, s := range e {
		if strings.HasPrefix(s.name, "kdeliver_") {
			for k := range s.labels {
				out[k] = true
			}
		}
	}
	return out
}

// syncBuffer is a bytes.Buffer safe for concurrent writes and reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
