//go:build unix

package sharetest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/integration"
	"github.com/kdeliver/kdeliver/share"
)

const (
	consumers  = 4                      // consumer processes running at once
	maxRecords = 100                    // share.WithMaxRecords: a poll, the most a consumer holds in hand
	delay      = time.Millisecond       // handler work per record
	maxDeliver = 3                      // kdeliver.WithMaxAttempts of the at-least-once consumers
	guardLease = 2 * time.Second        // dedup.WithLease: how long a killed holder's keys wait
	poisonAt   = 1234                   // the record whose handler always fails (at least once)
	topicParts = 3                      // partitions of the input topic
	runFor     = 150 * time.Second      // bound of one scenario
	stopFor    = 40 * time.Second       // bound of a consumer's SIGTERM stop
	statsLine  = "sharetest stats: "    // the helper's last line: share.Stats as JSON
	valuePre   = "s:"                   // input values are valuePre + sequence number
	modeALO    = "at-least-once"        // share.New(AtLeastOnce) with a dead-letter topic
	modeAMO    = "at-most-once"         // share.New(AtMostOnce)
	modeGuard  = "guard"                // share.NewWithGuard over a fileStore
	callsFile  = "calls-"               // + pid: the handler calls of one process
	storeFile  = "store"                // the guard's fileStore log, shared
	errPoison  = constError("poisoned") // the poison record's failure
)

type constError string

func (e constError) Error() string { return string(e) }

// killAt are the fractions of the records handled when a consumer process
// is SIGKILLed and replaced, as in the durability suite; a random part of
// a poll is added to each so that kills do not land on poll boundaries.
var killAt = []float64{0.2, 0.45, 0.7}

// Environment of a consumer helper process.
const (
	envMode  = "SHARETEST_MODE"
	envGroup = "SHARETEST_GROUP"
	envTopic = "SHARETEST_TOPIC"
	envDLQ   = "SHARETEST_DLQ"
	envDir   = "SHARETEST_DIR"
)

// TestHelperShare is a consumer process: a share.Consumer of envTopic in
// envGroup, run as envMode, whose handler sleeps delay and appends "value
// deliverycount pid ok|fail" to envDir/calls-PID with one write(2) before
// it returns: a write that returned is in the page cache, so a SIGKILL
// cannot undo it, and the file lists every handler call that got that far.
// The poison record's handler fails. In guard mode the side effect is a
// line of the shared fileStore, written with the guard's done mark. SIGTERM
// stops it cleanly; it then prints its share.Stats.
func TestHelperShare(t *testing.T) {
	if !integration.InHelper("TestHelperShare") {
		t.Skip("runs only as a helper process of the share tests")
	}
	mode, dir := os.Getenv(envMode), os.Getenv(envDir)
	brokers := strings.Split(os.Getenv(integration.EnvBrokers), ",")
	group, topics := os.Getenv(envGroup), []string{os.Getenv(envTopic)}
	pid := strconv.Itoa(os.Getpid())
	out, err := os.OpenFile(filepath.Join(dir, callsFile+pid), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	opts := []share.Option{share.WithStartAtEarliest(), share.WithMaxRecords(maxRecords),
		share.WithKgoOpts(kgo.FetchMaxWait(fetchMaxWait))}
	var c *share.Consumer
	var store *fileStore
	switch mode {
	case modeALO:
		c, err = share.New(brokers, group, topics, kdeliver.AtLeastOnce,
			append(opts, share.WithDeadLetterTopic(os.Getenv(envDLQ)), kdeliver.WithMaxAttempts(maxDeliver))...)
	case modeAMO:
		c, err = share.New(brokers, group, topics, kdeliver.AtMostOnce, opts...)
	case modeGuard:
		if store, err = openFileStore(filepath.Join(dir, storeFile)); err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		var g *dedup.Guard
		if g, err = dedup.NewGuard(store, group, dedup.WithLease(guardLease), dedup.WithTTL(time.Hour)); err != nil {
			t.Fatal(err)
		}
		c, err = share.NewWithGuard(brokers, group, topics, g, opts...)
	default:
		err = fmt.Errorf("unknown %s %q", envMode, mode)
	}
	if err != nil {
		t.Fatal(err)
	}
	poison := []byte(valuePre + strconv.Itoa(poisonAt))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	fmt.Printf("consumer %s: %s, group %s\n", pid, mode, group)
	err = c.Run(ctx, func(ctx context.Context, rec *kgo.Record) error {
		time.Sleep(delay)
		fail := mode == modeALO && string(rec.Value) == string(poison)
		outcome := "ok"
		if fail {
			outcome = "fail"
		}
		if _, err := fmt.Fprintf(out, "%s %d %s %s\n", rec.Value, rec.DeliveryCount(), pid, outcome); err != nil {
			return err
		}
		switch {
		case fail:
			return errPoison
		case store != nil:
			key, ttl, ok := dedup.ConfirmInTx(ctx)
			if !ok {
				return errors.New("not a guarded handler")
			}
			return store.confirmEffect(ctx, key, ttl, string(rec.Value)+" "+pid)
		}
		return nil
	})
	b, _ := json.Marshal(c.Stats())
	fmt.Printf("consumer %s: Run returned %v\n%s%s\n", pid, err, statsLine, b)
	if err != nil {
		t.Fatal(err)
	}
}

// scenario is one run of consumer processes over a topic, with kills.
type scenario struct {
	mode    string
	records int
	topic   string
	group   string
	dlq     string
	dir     string

	killed  map[int]bool // pids SIGKILLed
	stats   map[int]share.Stats
	elapsed time.Duration
}

// call is one line a handler wrote: a delivery it got to.
type call struct {
	seq, dc, pid int
	ok           bool
}

// run fills the topic, runs consumers processes, SIGKILLs one at random at
// each of killAt and starts a replacement, waits until the share group has
// acknowledged every record, then stops the survivors with SIGTERM.
func (s *scenario) run(t *testing.T) {
	ctx := timeout(t, runFor)
	c := cluster
	c.RequireReal(t)
	s.topic = topicName(t)
	s.group = s.topic + "-group"
	s.dir = t.TempDir()
	s.killed = map[int]bool{}
	s.stats = map[int]share.Stats{}
	if err := c.CreateTopic(ctx, s.topic, topicParts); err != nil {
		t.Fatal(err)
	}
	if s.mode == modeALO {
		s.dlq = s.topic + "-dlq"
		if err := c.CreateTopic(ctx, s.dlq, 1); err != nil {
			t.Fatal(err)
		}
	}
	cl := c.Client(t, kgo.DefaultProduceTopic(s.topic))
	recs := make([]*kgo.Record, s.records)
	for i := range recs {
		recs[i] = &kgo.Record{Key: []byte(strconv.Itoa(i)), Value: []byte(valuePre + strconv.Itoa(i))}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("fill %s: %v", s.topic, err)
	}

	env := append(c.Env(), envMode+"="+s.mode, envGroup+"="+s.group, envTopic+"="+s.topic,
		envDLQ+"="+s.dlq, envDir+"="+s.dir)
	start := func() *integration.Process { return integration.StartHelper(t, "TestHelperShare", env...) }
	began := time.Now()
	procs := make([]*integration.Process, consumers)
	for i := range procs {
		procs[i] = start()
	}
	anyExited := func() error {
		for _, p := range procs {
			select {
			case <-p.Done():
				return fmt.Errorf("consumer pid %d exited early: %v\n%s", p.Pid(), p.Wait(ctx), tail(p.Output(), 30))
			default:
			}
		}
		return nil
	}
	var progress lineCounter
	for i, frac := range killAt {
		want := int(frac*float64(s.records)) + rand.IntN(maxRecords)
		err := waitFor(ctx, fmt.Sprintf("%d handler calls", want), 20*time.Millisecond, func() (bool, string, error) {
			n, err := progress.count(s.dir)
			if err == nil {
				err = anyExited()
			}
			return n >= want, fmt.Sprintf("%d calls", n), err
		})
		if err != nil {
			t.Fatal(err)
		}
		v := rand.IntN(len(procs))
		p := procs[v]
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
		s.killed[p.Pid()] = true
		n, _ := progress.count(s.dir)
		t.Logf("kill %d: SIGKILL consumer pid %d at %d handler calls (%.1fs)", i+1, p.Pid(), n, time.Since(began).Seconds())
		procs[v] = start()
	}
	err := waitFor(ctx, "the share group to acknowledge every record", 200*time.Millisecond, func() (bool, string, error) {
		if err := anyExited(); err != nil {
			return false, "", err
		}
		done, state := groupDone(ctx, c, s.group, s.topic)
		return done, state, nil
	})
	if err != nil {
		missing := s.missing(t)
		t.Fatalf("%v\n%d records never handled, e.g. %v", err, len(missing), missing[:min(len(missing), 20)])
	}
	s.elapsed = time.Since(began)
	for _, p := range procs {
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range procs {
		wctx, cancel := context.WithTimeout(ctx, stopFor)
		err := p.Wait(wctx)
		cancel()
		if err != nil {
			t.Fatalf("consumer pid %d did not stop cleanly on SIGTERM: %v\n%s", p.Pid(), err, tail(p.Output(), 30))
		}
		st, err := parseStats(p.Output())
		if err != nil {
			t.Fatalf("consumer pid %d: %v", p.Pid(), err)
		}
		s.stats[p.Pid()] = st
	}
}

// missing returns the records that no handler call succeeded on.
func (s *scenario) missing(t *testing.T) []int {
	seen := make([]bool, s.records)
	for _, c := range s.calls(t) {
		seen[c.seq] = seen[c.seq] || c.ok
	}
	var out []int
	for seq, ok := range seen {
		if !ok {
			out = append(out, seq)
		}
	}
	return out
}

// calls returns every handler call of the scenario's processes, and fails
// the test on a line a handler did not write.
func (s *scenario) calls(t *testing.T) []call {
	files, err := filepath.Glob(filepath.Join(s.dir, callsFile+"*"))
	if err != nil {
		t.Fatal(err)
	}
	var out []call
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(data)) {
			c, ok := parseCall(line, s.records)
			if !ok {
				t.Fatalf("%s: a line the handler did not write: %q", name, line)
			}
			out = append(out, c)
		}
	}
	return out
}

func parseCall(line string, records int) (call, bool) {
	f := strings.Fields(line)
	if len(f) != 4 || !strings.HasSuffix(line, "\n") || !strings.HasPrefix(f[0], valuePre) || (f[3] != "ok" && f[3] != "fail") {
		return call{}, false
	}
	seq, err1 := strconv.Atoi(strings.TrimPrefix(f[0], valuePre))
	dc, err2 := strconv.Atoi(f[1])
	pid, err3 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || err3 != nil || seq < 0 || seq >= records || dc < 1 {
		return call{}, false
	}
	return call{seq: seq, dc: dc, pid: pid, ok: f[3] == "ok"}, true
}

func parseStats(output string) (share.Stats, error) {
	var st share.Stats
	i := strings.LastIndex(output, statsLine)
	if i < 0 {
		return st, errors.New("no stats line in its output")
	}
	line, _, _ := strings.Cut(output[i+len(statsLine):], "\n")
	return st, json.Unmarshal([]byte(line), &st)
}

// byDeliveryCount counts calls by delivery count, for the log.
func byDeliveryCount(calls []call) string {
	n := map[int]int{}
	for _, c := range calls {
		n[c.dc]++
	}
	var keys []int
	for k := range n {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%d:%d,", k, n[k])
	}
	return strings.TrimSuffix(b.String(), ",")
}

// lineCounter counts the lines of the calls files of a folder, reading
// only what was appended since its last call.
type lineCounter struct {
	offs  map[string]int64
	lines int
}

func (lc *lineCounter) count(dir string) (int, error) {
	if lc.offs == nil {
		lc.offs = map[string]int64{}
	}
	files, err := filepath.Glob(filepath.Join(dir, callsFile+"*"))
	if err != nil {
		return 0, err
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return 0, err
		}
		r := bufio.NewReader(io.NewSectionReader(f, lc.offs[name], 1<<62))
		for {
			line, err := r.ReadSlice('\n')
			if err != nil { // a line being written is counted next time
				break
			}
			lc.offs[name] += int64(len(line))
			lc.lines++
		}
		f.Close()
	}
	return lc.lines, nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (s *scenario) result(extra ...any) string {
	var b strings.Builder
	fmt.Fprintf(&b, "RESULT scenario=share-kills mode=%s records=%d consumers=%d kills=%d max_records=%d kafka=%s backend=%s seconds=%.1f",
		s.mode, s.records, consumers, len(s.killed), maxRecords, cluster.Version(), cluster.Kind(), s.elapsed.Seconds())
	for i := 0; i+1 < len(extra); i += 2 {
		fmt.Fprintf(&b, " %v=%v", extra[i], extra[i+1])
	}
	return b.String()
}

// TestAtLeastOnceKills: 30,000 records, four consumer processes, three
// SIGKILLs. Nothing may be lost; a record is delivered again only after the
// consumer that had it was killed, with a higher delivery count each time;
// the poison record is dead-lettered at its maxDeliver-th delivery and is
// the only dead letter.
func TestAtLeastOnceKills(t *testing.T) {
	s := &scenario{mode: modeALO, records: 30000}
	s.run(t)
	calls := s.calls(t)
	bySeq := make([][]call, s.records)
	for _, c := range calls {
		bySeq[c.seq] = append(bySeq[c.seq], c)
	}
	var lost, dup, afterLiveRun, redelivered int
	dupOf := map[int]int{} // killed pid → records it handled that were handled again
	for seq, cs := range bySeq {
		slices.SortFunc(cs, func(a, b call) int { return a.dc - b.dc })
		for i, c := range cs {
			if i > 0 && cs[i-1].dc == c.dc {
				t.Errorf("s:%d: delivery %d handled twice (pids %d and %d): the broker handed out one delivery twice", seq, c.dc, cs[i-1].pid, c.pid)
			}
			if c.dc > 1 {
				redelivered++
			}
		}
		if seq == poisonAt {
			continue
		}
		oks := 0
		for i, c := range cs {
			if !c.ok {
				t.Errorf("s:%d: a failed call (delivery %d, pid %d): only the poison fails", seq, c.dc, c.pid)
				continue
			}
			oks++
			// Every call but the last was followed by a redelivery,
			// which only a kill of its consumer explains.
			if i < len(cs)-1 {
				dupOf[c.pid]++
				if !s.killed[c.pid] {
					afterLiveRun++
					if afterLiveRun <= 5 {
						t.Errorf("s:%d: delivered again (delivery %d) after pid %d, not killed, handled delivery %d", seq, cs[i+1].dc, c.pid, c.dc)
					}
				}
			}
		}
		if oks == 0 {
			lost++
		}
		dup += max(0, oks-1)
	}

	// The poison: failed at every delivery it got, dead-lettered at
	// delivery maxDeliver (a second dead letter only if the writer of the
	// first was killed before its reject reached the broker).
	dlq, err := cluster.ReadCommitted(timeout(t, 30*time.Second), s.dlq)
	if err != nil {
		t.Fatal(err)
	}
	poison := valuePre + strconv.Itoa(poisonAt)
	var poisonDCs []int
	writerKilled := false
	for _, c := range bySeq[poisonAt] {
		poisonDCs = append(poisonDCs, c.dc)
		if c.ok {
			t.Errorf("the poison record succeeded (delivery %d, pid %d)", c.dc, c.pid)
		}
		if c.dc == maxDeliver && s.killed[c.pid] {
			writerKilled = true
		}
	}
	if !slices.Contains(poisonDCs, maxDeliver) {
		t.Errorf("the poison's delivery %d was not handled (deliveries handled: %v)", maxDeliver, poisonDCs)
	}
	for i, r := range dlq {
		attempts := header(r, kdeliver.HeaderDLQAttempts)
		switch {
		case string(r.Value) != poison:
			t.Errorf("dead letter %d is %q: only the poison %q may be dead-lettered", i, r.Value, poison)
		case i == 0 && attempts != strconv.Itoa(maxDeliver):
			t.Errorf("the poison was dead-lettered at delivery %s, want %d (kdeliver.WithMaxAttempts)", attempts, maxDeliver)
		}
	}
	if len(dlq) == 0 || len(dlq) > 2 || (len(dlq) == 2 && !writerKilled) {
		t.Errorf("%d dead letters, want 1 (2 only if the consumer that wrote the first was killed before rejecting)", len(dlq))
	}

	// The survivors' counters agree with their handlers' lines.
	for pid, st := range s.stats {
		var retried, failed int64
		for _, c := range calls {
			if c.pid == pid && c.dc > 1 {
				retried++
			}
			if c.pid == pid && !c.ok {
				failed++
			}
		}
		if st.Retried != retried || st.Failed != failed {
			t.Errorf("pid %d: Stats.Retried %d, Failed %d; its handler saw %d redeliveries and %d failures", pid, st.Retried, st.Failed, retried, failed)
		}
	}

	t.Log(s.result("calls", len(calls), "lost", lost, "duplicated", dup, "max_duplicated_per_kill", maxPerKill(dupOf), "redelivered", redelivered,
		"by_delivery_count", byDeliveryCount(calls), "poison_deliveries", fmt.Sprint(poisonDCs), "dead_letters", len(dlq)))
	if lost > 0 {
		t.Errorf("%d records never handled: AtLeastOnce must not lose any", lost)
	}
	if afterLiveRun > 0 {
		t.Errorf("%d records delivered again after a consumer that was not killed handled them", afterLiveRun)
	}
	// A kill repeats what its consumer handled but whose accept had not
	// reached the broker: the poll in hand, and the accepts franz-go
	// still held. It sends them with the next ShareFetch, or on their own
	// 1 s after the first (ackTimer), but not while a ShareFetch
	// long-polls (up to fetchMaxWait): at most ackTimer + fetchMaxWait of
	// handling, 1/delay records a second. Not the poll alone, as
	// share.WithMaxRecords's doc says.
	perKill := maxRecords + int((ackTimer+fetchMaxWait)/delay)
	for pid, n := range dupOf {
		if n > perKill {
			t.Errorf("the kill of pid %d repeated %d records, more than a poll and %s of handling (%d)", pid, n, ackTimer+fetchMaxWait, perKill)
		}
	}
}

const (
	// ackTimer is how long franz-go holds a share acknowledgement at
	// most before it sends it without a ShareFetch (kgo's
	// consumer_share.go), unless a ShareFetch is in flight.
	ackTimer = time.Second
	// fetchMaxWait is the consumers' kgo.FetchMaxWait (default 5 s): how
	// long a ShareFetch, and the acknowledgements behind it, can wait for
	// records.
	fetchMaxWait = 500 * time.Millisecond
)

// maxPerKill returns the largest count of m.
func maxPerKill(m map[int]int) int {
	n := 0
	for _, v := range m {
		n = max(n, v)
	}
	return n
}

// TestAtMostOnceKills: a record is never handled twice; a kill loses at
// most the poll its consumer held, accepted before its handler ran.
func TestAtMostOnceKills(t *testing.T) {
	s := &scenario{mode: modeAMO, records: 30000}
	s.run(t)
	calls := s.calls(t)
	seen := make([]int, s.records)
	for _, c := range calls {
		seen[c.seq]++
	}
	var lost, dup int
	for _, n := range seen {
		if n == 0 {
			lost++
		}
		dup += max(0, n-1)
	}
	var unconfirmed, skipped int64
	for _, st := range s.stats {
		unconfirmed += st.Unconfirmed
		skipped += st.Skipped
	}
	bound := len(s.killed)*maxRecords + int(unconfirmed)
	t.Log(s.result("calls", len(calls), "lost", lost, "lost_bound", bound, "duplicated", dup,
		"by_delivery_count", byDeliveryCount(calls), "unconfirmed", unconfirmed))
	if dup > 0 {
		t.Errorf("%d records handled twice: AtMostOnce must not repeat any", dup)
	}
	if skipped > 0 {
		t.Errorf("%d handler failures: the handler never fails", skipped)
	}
	if lost > bound {
		t.Errorf("%d records lost, more than one poll (%d) per kill and the %d whose accept was not confirmed", lost, maxRecords, unconfirmed)
	}
}

// TestGuardKills: share.NewWithGuard, the side effect committed with the
// guard's mark (dedup.ConfirmInTx on a fileStore the processes share):
// every side effect exactly once across the kills.
func TestGuardKills(t *testing.T) {
	s := &scenario{mode: modeGuard, records: 30000}
	s.run(t)
	calls := s.calls(t)
	effects, err := readEffects(filepath.Join(s.dir, storeFile))
	if err != nil {
		t.Fatal(err)
	}
	seen := make([]int, s.records)
	for _, e := range effects {
		v, _, _ := strings.Cut(e, " ")
		seq, err := strconv.Atoi(strings.TrimPrefix(v, valuePre))
		if err != nil || !strings.HasPrefix(v, valuePre) || seq < 0 || seq >= s.records {
			t.Fatalf("an effect the handler did not write: %q", e)
		}
		seen[seq]++
	}
	var lost, dup int
	for _, n := range seen {
		if n == 0 {
			lost++
		}
		dup += max(0, n-1)
	}
	var skipped int64
	for _, st := range s.stats {
		skipped += st.Duplicates
	}
	t.Log(s.result("calls", len(calls), "effects", len(effects), "lost", lost, "duplicated", dup,
		"by_delivery_count", byDeliveryCount(calls), "guard_duplicates_survivors", skipped))
	if lost > 0 || dup > 0 {
		t.Errorf("%d side effects missing and %d repeated: the guard must give each exactly once", lost, dup)
	}
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
