package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func runCmd(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// demoReport runs a small demo on the embedded cluster with the fixed seed.
func demoReport(t *testing.T, args ...string) Report {
	t.Helper()
	code, out, errOut := runCmd(append([]string{"demo", "--records", "1000", "--json"}, args...)...)
	if code != exitOK {
		t.Fatalf("demo exit %d; stderr:\n%s", code, errOut)
	}
	var rep Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("demo --json is not JSON: %v\n%s", err, out)
	}
	return rep
}

func TestDemoShowsEachGuarantee(t *testing.T) {
	rep := demoReport(t)
	if !rep.OK || !rep.FaultsInjected || rep.Records != 1000 || len(rep.Rows) != 3 {
		t.Fatalf("report header = %+v", rep)
	}
	for i, r := range rep.Rows {
		if r.Semantics != kdeliver.All[i] {
			t.Fatalf("row %d is %v; want %v", i, r.Semantics, kdeliver.All[i])
		}
		if r.Produced != 1000 {
			t.Errorf("%v produced %d; want 1000", r.Semantics, r.Produced)
		}
		if r.DeliveredOnce+r.Duplicated+r.Lost > r.Produced {
			t.Errorf("%v: delivered once %d + duplicated %d + lost %d exceed produced %d", r.Semantics, r.DeliveredOnce, r.Duplicated, r.Lost, r.Produced)
		}
		if r.FaultsInjected == 0 || r.ConsumerCrashes == 0 {
			t.Errorf("%v: %d faults injected, %d crashes; the plan injects both", r.Semantics, r.FaultsInjected, r.ConsumerCrashes)
		}
		if !r.GuaranteeHeld {
			t.Errorf("%v broke its guarantee: %+v", r.Semantics, r)
		}
		switch r.Semantics {
		case kdeliver.AtMostOnce:
			// Guarantee: no duplicates. Under the seeded faults it loses.
			if r.Duplicated != 0 {
				t.Errorf("at-most-once duplicated %d", r.Duplicated)
			}
			if r.Lost == 0 {
				t.Error("at-most-once lost nothing under dropped produce requests and consumer crashes")
			}
			// The faults account for every record missing from the log:
			// kfake loses nothing on its own.
			if r.InLog == nil || r.RefusedByFaults == 0 || *r.InLog != r.Acknowledged-r.RefusedByFaults || r.LostByBroker != 0 {
				t.Errorf("at-most-once: in log %v, acknowledged %d, refused by faults %d, lost by broker %d", r.InLog, r.Acknowledged, r.RefusedByFaults, r.LostByBroker)
			}
			if r.Lost != r.RefusedByFaults+r.LostByConsumer {
				t.Errorf("at-most-once lost %d; want refused %d + skipped by crashes %d", r.Lost, r.RefusedByFaults, r.LostByConsumer)
			}
			if want := fmt.Sprintf("(%d records;", r.RefusedByFaults); !strings.Contains(r.Note, want) || strings.Contains(r.Note, "never reached the log") {
				t.Errorf("at-most-once note %q lacks %q or blames the broker", r.Note, want)
			}
		case kdeliver.AtLeastOnce:
			// Guarantee: no loss. Consumer crashes before commit repeat records.
			if r.Lost != 0 {
				t.Errorf("at-least-once lost %d acknowledged records", r.Lost)
			}
			if r.Acknowledged != r.Produced {
				t.Errorf("at-least-once acknowledged %d of %d: its retries should ride out lost acks", r.Acknowledged, r.Produced)
			}
			if r.Duplicated == 0 {
				t.Error("at-least-once duplicated nothing although its consumer crashed before committing")
			}
			if r.InLog == nil || *r.InLog != r.Produced || r.LostByBroker != 0 || r.LostByConsumer != 0 {
				t.Errorf("at-least-once: in log %v of %d produced, lost by broker %d, by consumer %d", r.InLog, r.Produced, r.LostByBroker, r.LostByConsumer)
			}
		case kdeliver.ExactlyOnce:
			if r.Lost != 0 || r.Duplicated != 0 || r.DeliveredOnce != r.Produced {
				t.Errorf("exactly-once: lost %d, duplicated %d, delivered once %d of %d", r.Lost, r.Duplicated, r.DeliveredOnce, r.Produced)
			}
			if r.AbortedTxns == 0 {
				t.Error("exactly-once aborted no transaction; the plan aborts two")
			}
			if r.InLog != nil {
				t.Errorf("exactly-once counted %d records in a log that holds aborted ones too", *r.InLog)
			}
		}
	}
}

func TestDemoTable(t *testing.T) {
	// The library logs to slog.Default when given no logger: catch that.
	var logged syncBuffer
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&logged, nil)))
	code, out, errOut := runCmd("demo", "--records", "300", "--semantics", "alo,amo", "--crashes", "1")
	if code != exitOK {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	for _, want := range []string{"semantics", "produced", "acknowledged", "delivered once", "lost", "duplicated", "records/s",
		"at-most-once", "at-least-once", "no duplicates: held", "no loss: held"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "on an embedded kfake cluster (3 brokers on 127.0.0.1)\n") {
		t.Errorf("header does not name the embedded cluster:\n%s", out)
	}
	if strings.Contains(out, "exactly-once ") {
		t.Errorf("--semantics alo,amo ran exactly-once too:\n%s", out)
	}
	if strings.Index(out, "at-most-once") > strings.Index(out, "at-least-once") {
		t.Errorf("rows are not weakest first:\n%s", out)
	}
	if !strings.Contains(errOut, "kdeliver demo: ") {
		t.Errorf("no progress line on stderr: %q", errOut)
	}
	// The crashes and faults are on purpose: no library warning about them
	// may reach stderr, only the progress line.
	for _, line := range strings.Split(strings.TrimSpace(errOut), "\n") {
		if !strings.HasPrefix(line, "kdeliver demo: ") {
			t.Errorf("stderr has a line that is not the progress line: %q", line)
		}
	}
	if l := logged.String(); l != "" {
		t.Errorf("the demo's clients logged to slog.Default:\n%s", l)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
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

func TestDemoWithoutCrashes(t *testing.T) {
	code, out, errOut := runCmd("demo", "--records", "300", "--semantics", "amo,alo", "--crashes", "0")
	if code != exitOK {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	// Neither the header, the notes, the legend nor the progress line may
	// speak of crashes that did not happen.
	if strings.Contains(strings.ToLower(out+errOut), "crash") {
		t.Errorf("--crashes 0 mentions crashes:\n%s\n%s", out, errOut)
	}
	if !strings.Contains(out, "refused unwritten instead.\n") {
		t.Errorf("the faults line does not end the header:\n%s", out)
	}
}

func TestDemoTimeout(t *testing.T) {
	// A cluster whose partition 1 never takes writes: the wait for it is
	// what times out.
	c, _ := startWithClient(t)
	refuseListOffsets(c, func(topic string) bool { return strings.HasPrefix(topic, "kdeliver-demo-") }, func(int64) bool { return true })
	unready := strings.Join(c.Brokers(), ",")

	cases := []struct {
		args []string
		want []string
	}{
		// Over before the topic is ready.
		{[]string{"--semantics", "amo", "--records", "100", "--timeout", "1ms"},
			[]string{"kdeliver: at-most-once: timed out while ", "; raise --timeout (now 1ms)"}},
		// Over mid-run: 10,000 records in 20 transactions, 2 of them
		// aborted, through 3 session crashes take seconds on kfake.
		{[]string{"--semantics", "eos", "--records", "10000", "--timeout", "500ms"},
			[]string{"kdeliver: exactly-once: timed out while ", " records sent, ", "; raise --timeout (now 500ms)"}},
		{[]string{"--brokers", unready, "--semantics", "alo", "--timeout", "1s"},
			[]string{"kdeliver: at-least-once: timed out while waiting for topic kdeliver-demo-at-least-once-",
				" to take writes (5 of 6 partitions ready; partition 1: its leader ", " answers NOT_LEADER_FOR_PARTITION); raise --timeout (now 1s)"}},
	}
	for _, c := range cases {
		code, out, errOut := runCmd(append([]string{"demo"}, c.args...)...)
		if code != exitFail || out != "" {
			t.Errorf("%q: exit %d, stdout %q; want 1 and nothing", c.args, code, out)
		}
		lines := strings.Split(strings.TrimSpace(errOut), "\n")
		last := lines[len(lines)-1]
		for _, l := range lines[:len(lines)-1] {
			if !strings.HasPrefix(l, "kdeliver demo: ") {
				t.Errorf("%q: stderr line %q is neither progress nor the error", c.args, l)
			}
		}
		for _, w := range c.want {
			if !strings.Contains(last, w) {
				t.Errorf("%q: error %q lacks %q", c.args, last, w)
			}
		}
		if strings.Contains(last, "deadline exceeded") || strings.Count(last, "timed out") != 1 {
			t.Errorf("%q: error %q nests the deadline", c.args, last)
		}
	}
}

func TestBadInput(t *testing.T) {
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{nil, exitUsage, "Usage:"},
		{[]string{"frob"}, exitUsage, `unknown command "frob"`},
		{[]string{"demo", "--semantics", "twice"}, exitUsage, `unknown semantics "twice": use one of at-most-once`},
		{[]string{"demo", "--records", "many"}, exitUsage, "-records"},
		{[]string{"demo", "--records", "3"}, exitUsage, "--records 3: use at least 10"},
		{[]string{"demo", "--nope"}, exitUsage, "flag provided but not defined: -nope"},
		{[]string{"demo", "extra"}, exitUsage, "demo takes no arguments"},
		{[]string{"demo", "--brokers", "a,,b"}, exitUsage, "empty address"},
		{[]string{"demo", "--brokers", "127.0.0.1:1"}, exitFail, "cannot reach brokers 127.0.0.1:1"},
		{[]string{"explain"}, exitUsage, "explain takes one semantics"},
		{[]string{"explain", "sometimes"}, exitUsage, `unknown semantics "sometimes"`},
	}
	for _, c := range cases {
		code, out, errOut := runCmd(c.args...)
		if code != c.code {
			t.Errorf("%q: exit %d; want %d (stderr %q)", c.args, code, c.code, errOut)
		}
		if !strings.Contains(errOut, c.msg) {
			t.Errorf("%q: stderr %q lacks %q", c.args, errOut, c.msg)
		}
		if c.args != nil && strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
			t.Errorf("%q: stderr is not one line: %q", c.args, errOut)
		}
		if strings.Contains(errOut, "goroutine ") || out != "" {
			t.Errorf("%q: stdout %q, stderr %q", c.args, out, errOut)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		code, out, _ := runCmd(args...)
		if code != exitOK || !strings.Contains(out, "kdeliver demo") || !strings.Contains(out, "kdeliver explain SEMANTICS") {
			t.Errorf("%q: exit %d, stdout %q", args, code, out)
		}
	}
	code, _, errOut := runCmd("demo", "-h")
	if code != exitOK || !strings.Contains(errOut, "-records") || !strings.Contains(errOut, "-semantics") {
		t.Errorf("demo -h: exit %d, stderr %q", code, errOut)
	}
}

func TestExplain(t *testing.T) {
	for _, s := range kdeliver.All {
		code, out, errOut := runCmd("explain", strings.ToUpper(s.String()))
		if code != exitOK {
			t.Fatalf("explain %v: exit %d: %s", s, code, errOut)
		}
		p := s.Preset()
		for _, want := range []string{
			s.String() + ":", "acks=" + p.Producer.Acks, "commit " + p.Consumer.CommitOrder.String(), "isolation " + p.Consumer.Isolation,
			"producer retry", "consumer crash", "rebalance", "broker loss",
			"Where the guarantee ends", "weakest link", "sink:", "demo --semantics " + s.String(),
			"Build it:", "producer.New",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("explain %v lacks %q", s, want)
			}
		}
		// The API before issue 8 is gone: the text must not send anyone to it.
		for _, old := range []string{"WithTransactionalID", "WithDedup", "consumer.WithSink", "producer.ErrFenced", "producer.DeliveryError",
			"producer.ErrAborted", "consumer.WithBackoff", "consumer.WithMaxAttempts", "eos.WithBackoff", "eos.WithMaxAttempts", "eos.ErrFenced",
			"dedup.ErrFenced", "dedup.Sink", "kdeliver.Problems", "MessageIDHeader"} {
			if strings.Contains(out, old) {
				t.Errorf("explain %v names %s, which no longer exists", s, old)
			}
		}
	}
	for s, want := range map[kdeliver.Semantics][]string{
		kdeliver.AtLeastOnce: {"consumer.New(brokers, group, topics, kdeliver.AtLeastOnce)", "kdeliver.WithBackoff", "kdeliver.WithMaxAttempts", "*kdeliver.DeliveryError"},
		kdeliver.ExactlyOnce: {"producer.NewTransactional", "consumer.NewWithSink", "consumer.NewWithGuard", "eos.New", "kdeliver.ErrFenced"},
	} {
		_, out, _ := runCmd("explain", s.String())
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("explain %v lacks %q", s, w)
			}
		}
	}
	// Every semantics has its explanation filled in.
	for _, s := range kdeliver.All {
		e := explanations[s]
		if e.promise == "" || len(e.build) == 0 || len(e.failures) != 4 || len(e.ends) == 0 {
			t.Errorf("explanation of %v is incomplete: %+v", s, e)
		}
	}
}

func TestSemanticsFlag(t *testing.T) {
	cfg, err := parseDemo([]string{"--semantics", "eos", "--semantics", "AT_MOST_ONCE,alo,eos"}, new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.sems) != 3 || cfg.sems[0] != kdeliver.AtMostOnce || cfg.sems[2] != kdeliver.ExactlyOnce {
		t.Errorf("sems = %v; want all three, weakest first, once each", cfg.sems)
	}
	cfg, err = parseDemo(nil, new(bytes.Buffer))
	if err != nil || cfg.records != 10000 || len(cfg.sems) != 3 || len(cfg.brokers) != 0 {
		t.Errorf("defaults = %+v, %v", cfg, err)
	}
}

func TestGuaranteeCheck(t *testing.T) {
	cases := []struct {
		sem        kdeliver.Semantics
		lost, dups int
		held       bool
	}{
		{kdeliver.AtMostOnce, 5, 0, true},
		{kdeliver.AtMostOnce, 0, 1, false},
		{kdeliver.AtLeastOnce, 0, 9, true},
		{kdeliver.AtLeastOnce, 1, 0, false},
		{kdeliver.ExactlyOnce, 0, 0, true},
		{kdeliver.ExactlyOnce, 0, 1, false},
		{kdeliver.ExactlyOnce, 1, 0, false},
	}
	for _, c := range cases {
		if _, held, _ := guarantee(c.sem, Row{Lost: c.lost, Duplicated: c.dups}); held != c.held {
			t.Errorf("%v lost=%d dup=%d: held=%v; want %v", c.sem, c.lost, c.dups, held, c.held)
		}
	}
}

func TestDemoOnGivenBrokers(t *testing.T) {
	// A cluster the demo did not start stands in for a real one: no faults
	// can be injected, the consumer is still crashed.
	c := kdelivertest.Start(t)
	code, out, errOut := runCmd("demo", "--brokers", strings.Join(c.Brokers(), ","), "--records", "300", "--semantics", "at-least-once", "--json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rep Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.FaultsInjected || len(rep.Rows) != 1 {
		t.Fatalf("report = %+v", rep)
	}
	r := rep.Rows[0]
	if r.Lost != 0 || r.ConsumerCrashes == 0 || r.FaultsInjected != 0 || !strings.Contains(r.Note, "no faults injected") {
		t.Errorf("row = %+v", r)
	}

	brokers := strings.Join(c.Brokers(), ",")
	code, out, errOut = runCmd("demo", "--brokers", brokers, "--records", "100", "--semantics", "alo", "--crashes", "0")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if strings.Contains(strings.ToLower(out+errOut), "crash") {
		t.Errorf("--crashes 0 mentions crashes:\n%s\n%s", out, errOut)
	}
	if header, _, _ := strings.Cut(out, "\n"); header != "kdeliver demo: 100 numbered records per semantics on the cluster at "+brokers {
		t.Errorf("header = %q", header)
	}
}

func TestDemoNamesLossesTheBrokerCaused(t *testing.T) {
	// A cluster the demo did not start drops the first two acks=0 produce
	// requests unwritten, as Kafka does when it answers NOT_LEADER_OR_FOLLOWER
	// to a partition not yet served: the demo injected nothing, so it must
	// blame the broker, not its faults.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, cl := startWithClient(t)
	var mu sync.Mutex
	var last kmsg.Request
	dropped := 0
	c.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.NotLeaderForPartition, Count: -1, When: func(req kmsg.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		if pr, ok := req.(*kmsg.ProduceRequest); !ok || pr.Acks != 0 {
			return false
		}
		if req != last && dropped < 2 { // When runs once per partition of a request
			last = req
			dropped++
		}
		return req == last
	}})
	// The row as runDemo runs it on given brokers, but with the embedded
	// cluster's idle time: at-most-once never delivers everything.
	env := &demoEnv{cfg: demoConfig{records: 300, crashes: 1, partitions: 6, timeout: time.Minute},
		brokers: c.Brokers(), admin: cl, idle: time.Second, runID: "broker-loss"}
	r, err := env.runRow(ctx, kdeliver.AtMostOnce, rand.New(rand.NewPCG(1, 1)), newProgress(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	if r.InLog == nil || r.LostByBroker == 0 || r.LostByBroker != r.Acknowledged-*r.InLog || r.RefusedByFaults != 0 || r.FaultsInjected != 0 {
		t.Fatalf("row = %+v; want the records missing from the log counted as lost by the broker", r)
	}
	if r.Lost != r.LostByBroker+r.LostByConsumer {
		t.Errorf("lost %d; want lost by broker %d + by consumer %d", r.Lost, r.LostByBroker, r.LostByConsumer)
	}
	want := fmt.Sprintf("%d acknowledged records never reached the log (acks=0", r.LostByBroker)
	if !strings.Contains(r.Note, want) || strings.Contains(r.Note, "refused unwritten on purpose") {
		t.Errorf("note %q lacks %q or claims injected faults", r.Note, want)
	}
}

func TestNoteNeverHidesMissingRecords(t *testing.T) {
	r := Row{Semantics: kdeliver.AtMostOnce, Produced: 2000, Acknowledged: 2000, InLog: new(42), LostByBroker: 1958, Lost: 1960, LostByConsumer: 2, ConsumerCrashes: 3, ShowedExpectedRisk: true}
	got := note(r, false)
	if !strings.Contains(got, "1958 acknowledged records never reached the log") || strings.Contains(got, "0 produce requests") {
		t.Errorf("note = %q", got)
	}
	r.InLog, r.LostByBroker, r.Lost, r.LostByConsumer = new(2000), 0, 2, 2
	if got := note(r, false); !strings.Contains(got, "every acknowledged record reached the log") || strings.Contains(got, "never reached") {
		t.Errorf("note = %q", got)
	}
}
