package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/cmd/kdeliver/internal/copier"
	"github.com/kdeliver/kdeliver/internal/exampleenv"
	"github.com/kdeliver/kdeliver/kdelivertest"
	"github.com/kdeliver/kdeliver/producer"
)

const verifySynopsis = `kdeliver verify [--input IN --output OUT] [--records N] [--keys K] [--no-seed]
                       [--run 'CMD'] [--kills N] [--expect SEMANTICS] [--ordered]
                       [--brokers host:port,... [connection flags]] [--json] [--timeout D] [--quiet D]
       kdeliver verify copy [--mode eos|alo|amo] [--session-timeout D] [--txn-timeout D] [--delay D]

Checks a pipeline that copies (or transforms) the input topic into the
output topic. It writes N numbered records to the input (with --no-seed it
checks the records of the latest verify run already there), waits until
every one of them is in the output's committed records or no new one has
come for --quiet, then reads the output with read_committed and with
read_uncommitted and counts, per input record:

  lost           not in the committed output
  duplicated     in the committed output more than once
  reordered      per output partition and key, a record's first delivery
                 after that of a later record of its key
  aborted reads  output records read_uncommitted readers see and
                 read_committed ones do not (aborted transactions)

Both reads stop at each partition's last stable offset: the records of a
transaction still open when verify ends count neither way. Order is judged
within each output partition only.

Each seeded value is "kdv1:RUN:SEQ:KEY:KSEQ": RUN names this verify run,
SEQ is 0..N-1, KEY is the record's key "k{SEQ mod K}" and KSEQ = SEQ div K,
the record's number within its key. An output record counts when its value
contains such a mark anywhere (a pipeline may wrap the input value).

With --run 'CMD', verify starts the pipeline with sh -c CMD after seeding
and SIGKILLs its process group --kills times (3 by default), each after a
random share of the input has reached the committed output (or after half
of --quiet without progress), starting it again at once; at the end it
sends SIGTERM (SIGKILL 15s later). The pipeline finds its cluster and
topics in the environment:

  KDELIVER_BROKERS  comma-separated seed brokers
  KDELIVER_INPUT    the input topic
  KDELIVER_OUTPUT   the output topic
  KDELIVER_GROUP    a consumer group name for this run, the same across restarts

and, with the connection flags, how to connect (empty when off):

  KDELIVER_TLS                 1 for TLS (any --tls flag)
  KDELIVER_TLS_CA, KDELIVER_TLS_CERT, KDELIVER_TLS_KEY
                               --tls-ca, --tls-cert, --tls-key, as absolute paths
  KDELIVER_SASL_MECHANISM, KDELIVER_SASL_USER
                               --sasl-mechanism, --sasl-user
  KDELIVER_SASL_PASSWORD_FILE  --sasl-password-file, as an absolute path
  KDELIVER_SASL_PASSWORD       the password, if verify was given it so
  KDELIVER_PLAINTEXT_SASL      1 for --plaintext-sasl

Without --run and --brokers, verify runs its own exactly-once copier (kdeliver
verify copy: an eos.Session) on an embedded cluster (kfake, 3 brokers on
127.0.0.1) and kills it 3 times. With --brokers and no --run, the pipeline is
yours and already running; verify only seeds and checks. Missing topics are
created with --partitions partitions.

kdeliver verify copy is that copier: it copies $KDELIVER_INPUT to
$KDELIVER_OUTPUT until SIGTERM, through an eos.Session (--mode eos), an
at-least-once consumer and producer committing every 2s (alo: a kill
duplicates), or an at-most-once pair (amo: a kill loses).

Exit status: 0 when the output keeps the --expect guarantee (exactly-once:
none lost or duplicated; at-least-once: none lost; at-most-once: none
duplicated; --ordered: also none reordered), 1 when it does not (or verify
could not run), 2 for a bad command line.`

// Environment of a pipeline started with --run.
const (
	envBrokers = "KDELIVER_BROKERS"
	envInput   = "KDELIVER_INPUT"
	envOutput  = "KDELIVER_OUTPUT"
	envGroup   = "KDELIVER_GROUP"
)

// verifyConfig is verify's command line.
type verifyConfig struct {
	brokers    []string // empty: embedded cluster
	input      string
	output     string
	records    int
	keys       int
	seed       bool
	run        string // "": no pipeline started, or the built-in copier on the embedded cluster
	kills      int
	expect     kdeliver.Semantics
	ordered    bool
	json       bool
	timeout    time.Duration
	quiet      time.Duration
	partitions int
	conn       conn // with brokers: how to connect to them
}

func parseVerify(args []string, stderr io.Writer) (verifyConfig, error) {
	cfg := verifyConfig{expect: kdeliver.ExactlyOnce}
	fs := newFlagSet("verify", verifySynopsis, stderr)
	brokers := fs.String("brokers", "", "comma-separated seed brokers of a real cluster (default: an embedded kfake cluster)")
	fs.StringVar(&cfg.input, "input", "", "input topic the pipeline reads (default on the embedded cluster: verify-in)")
	fs.StringVar(&cfg.output, "output", "", "output topic the pipeline writes (default on the embedded cluster: verify-out)")
	fs.IntVar(&cfg.records, "records", 5000, "numbered records to seed into the input")
	fs.IntVar(&cfg.keys, "keys", 10, "distinct keys of the seeded records")
	seed := fs.Bool("seed", true, "seed the input with numbered records (see --no-seed)")
	noSeed := fs.Bool("no-seed", false, "seed nothing: check the latest verify run already in the input")
	fs.StringVar(&cfg.run, "run", "", "shell command that starts the pipeline (sh -c); it is killed and restarted --kills times")
	fs.IntVar(&cfg.kills, "kills", -1, "times to SIGKILL the pipeline started with --run (default 3)")
	fs.Func("expect", "guarantee the output must keep: exactly-once (default), at-least-once or at-most-once", func(s string) error {
		sem, err := kdeliver.ParseSemantics(s)
		if err != nil {
			return fmt.Errorf("use exactly-once, at-least-once or at-most-once, not %q", s)
		}
		cfg.expect = sem
		return nil
	})
	fs.BoolVar(&cfg.ordered, "ordered", false, "fail also when a key's records are reordered")
	fs.BoolVar(&cfg.json, "json", false, "print the result as one JSON object on stdout")
	fs.DurationVar(&cfg.timeout, "timeout", 5*time.Minute, "stop waiting for the output after this long")
	fs.DurationVar(&cfg.quiet, "quiet", 30*time.Second, "stop waiting when no new input record has reached the committed output for this long")
	fs.IntVar(&cfg.partitions, "partitions", 6, "partitions of topics verify creates")
	var cf connFlags
	cf.register(fs)
	if err := fs.parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, usagef("verify takes no arguments, got %q (quote the pipeline's command: --run 'CMD')", strings.Join(fs.Args(), " "))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg.seed = *seed && !*noSeed
	if *brokers != "" {
		for _, b := range strings.Split(*brokers, ",") {
			b = strings.TrimSpace(b)
			if b == "" {
				return cfg, usagef("--brokers %q has an empty address", *brokers)
			}
			cfg.brokers = append(cfg.brokers, b)
		}
	}
	embedded := len(cfg.brokers) == 0
	switch {
	case set["seed"] && *seed && *noSeed:
		return cfg, usagef("--seed and --no-seed contradict each other: pass one")
	case !embedded && (cfg.input == "" || cfg.output == ""):
		return cfg, usagef("--brokers needs --input and --output: the topics your pipeline reads and writes")
	case cfg.input != "" && cfg.input == cfg.output:
		return cfg, usagef("--input and --output are both %q: the pipeline must write to another topic", cfg.input)
	case embedded && !cfg.seed:
		return cfg, usagef("--no-seed needs --brokers: the embedded cluster starts empty, there is nothing to check")
	case cfg.records < 1:
		return cfg, usagef("--records %d: use at least 1", cfg.records)
	case cfg.keys < 1:
		return cfg, usagef("--keys %d: use at least 1", cfg.keys)
	case cfg.kills < -1:
		return cfg, usagef("--kills %d: use 0 or more", cfg.kills)
	case cfg.kills > 0 && cfg.run == "" && !embedded:
		return cfg, usagef("--kills %d needs --run 'CMD': verify can only kill a pipeline it started", cfg.kills)
	case cfg.timeout <= 0:
		return cfg, usagef("--timeout %v: use a positive duration", cfg.timeout)
	case cfg.quiet <= 0:
		return cfg, usagef("--quiet %v: use a positive duration", cfg.quiet)
	case cfg.partitions < 1:
		return cfg, usagef("--partitions %d: use at least 1", cfg.partitions)
	}
	if cfg.input == "" {
		cfg.input = "verify-in"
	}
	if cfg.output == "" {
		cfg.output = "verify-out"
	}
	if cfg.input == cfg.output {
		return cfg, usagef("--input and --output are both %q: the pipeline must write to another topic", cfg.input)
	}
	if cfg.kills == -1 {
		cfg.kills = 0
		if cfg.run != "" || embedded {
			cfg.kills = 3
		}
	}
	if embedded {
		return cfg, cf.noConnOnEmbedded("verify")
	}
	var err error
	cfg.conn, err = cf.resolve(os.Getenv)
	return cfg, err
}

// VerifyReport is the result of a verify run. Its JSON form is the output
// of `kdeliver verify --json`.
type VerifyReport struct {
	Cluster  string `json:"cluster"`
	Input    string `json:"input"`
	Output   string `json:"output"`
	Run      string `json:"run"`    // RUN of the values checked
	Seeded   bool   `json:"seeded"` // false: --no-seed
	Pipeline string `json:"pipeline,omitempty"`
	// KillsPlanned are the SIGKILLs asked for, Kills those made (fewer if
	// the output was complete first), Starts the pipeline's starts.
	KillsPlanned int `json:"kills_planned"`
	Kills        int `json:"kills"`
	Starts       int `json:"starts"`

	Counts

	Expect  kdeliver.Semantics `json:"expect"`
	Ordered bool               `json:"ordered"`
	Pass    bool               `json:"pass"`
	// Failed says what broke the guarantee, e.g. "12 duplicated".
	Failed  []string `json:"failed,omitempty"`
	Ended   string   `json:"ended"` // why verify stopped waiting
	Seconds float64  `json:"seconds"`
	Notes   []string `json:"notes,omitempty"`
}

func runVerify(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "copy" {
		return runVerifyCopy(args[1:], stderr)
	}
	cfg, err := parseVerify(args, stderr)
	if err != nil {
		return err
	}
	began := time.Now()
	ctx := context.Background()
	errw := &lockedWriter{w: stderr}

	rep := VerifyReport{Input: cfg.input, Output: cfg.output, Seeded: cfg.seed, KillsPlanned: cfg.kills,
		Expect: cfg.expect, Ordered: cfg.ordered}
	brokers := cfg.brokers
	builtin := false
	if len(brokers) == 0 {
		cl, err := kdelivertest.NewCluster(kdelivertest.WithTopic(cfg.input, int32(cfg.partitions)),
			kdelivertest.WithTopic(cfg.output, int32(cfg.partitions)))
		if err != nil {
			return err
		}
		defer cl.Close()
		brokers = cl.Brokers()
		rep.Cluster = "embedded kfake cluster (3 brokers on 127.0.0.1)"
		if cfg.run == "" {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("finding kdeliver's own executable for the built-in copier: %w (pass --run 'CMD')", err)
			}
			// kfake takes short group timeouts: a killed copier's
			// partitions are free again after 2s. The delay spreads the
			// copy over a few seconds, so that the kills land mid-copy.
			cfg.run = "exec " + shellQuote(exe) + " verify copy --mode eos --session-timeout 2s --txn-timeout 1s --delay 1ms"
			builtin = true
		}
	} else {
		if err := exampleenv.CreateTopicsWith(ctx, brokers, cfg.conn.kgo, int32(cfg.partitions), cfg.input, cfg.output); err != nil {
			return err
		}
		rep.Cluster = "cluster at " + strings.Join(brokers, ",")
	}
	rep.Pipeline = cfg.run
	if builtin {
		rep.Pipeline = "kdeliver verify copy --mode eos (built in)"
	}

	// The input records to find.
	var want []int64
	if cfg.seed {
		rep.Run = newRunID()
		if want, err = seedInput(ctx, brokers, cfg.conn, cfg.input, rep.Run, cfg.records, cfg.keys); err != nil {
			return err
		}
	} else {
		var notes []string
		rep.Run, want, notes, err = readInput(ctx, brokers, cfg.conn, cfg.input)
		if err != nil {
			return err
		}
		rep.Notes = append(rep.Notes, notes...)
	}

	live, err := newLiveReader(brokers, cfg.conn, cfg.output, rep.Run, want)
	if err != nil {
		return err
	}
	defer live.close()

	var pipe *pipeline
	if cfg.run != "" {
		pipe = &pipeline{line: cfg.run, out: &prefixWriter{w: errw, prefix: "pipeline: "},
			env: append(os.Environ(), envBrokers+"="+strings.Join(brokers, ","), envInput+"="+cfg.input,
				envOutput+"="+cfg.output, envGroup+"=kdeliver-verify-"+rep.Run)}
		pipe.env = append(pipe.env, cfg.conn.env...)
		if err := pipe.start(); err != nil {
			return err
		}
		defer pipe.stop(15 * time.Second)
	}

	prog := newProgress(stderr)
	prog.w = errw
	rep.Ended = wait(cfg, pipe, live, len(want), prog, began)
	prog.clear()
	if pipe != nil {
		if err := pipe.stop(15 * time.Second); err != nil {
			rep.Notes = append(rep.Notes, err.Error())
		}
		rep.Kills, rep.Starts = pipe.kills, pipe.starts
		if pipe.exitedEarly != "" {
			rep.Notes = append(rep.Notes, pipe.exitedEarly)
		}
	}

	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	committed, err := readAll(rctx, brokers, cfg.conn, cfg.output, kgo.ReadCommitted())
	if err != nil {
		return err
	}
	uncommitted, err := readAll(rctx, brokers, cfg.conn, cfg.output, kgo.ReadUncommitted())
	if err != nil {
		return err
	}
	rep.Counts = check(rep.Run, want, committed, uncommitted)
	rep.Pass, rep.Failed = verdict(cfg.expect, rep.Counts, cfg.ordered)
	if rep.Kills < rep.KillsPlanned {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d of %d kills made: the output was complete (or the pipeline gone) before the rest were due", rep.Kills, rep.KillsPlanned))
	}
	rep.Seconds = math.Round(time.Since(began).Seconds()*10) / 10

	if cfg.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		writeVerify(stdout, rep)
	}
	if !rep.Pass {
		fmt.Fprintf(errw, "kdeliver: verify: %s broken: %s\n", rep.Expect, strings.Join(rep.Failed, ", "))
		return errReported
	}
	return nil
}

// wait lets the pipeline run, killing and restarting it as planned, until
// every input record is in the committed output, nothing new came for the
// quiet period, the pipeline exited on its own, or the timeout passed. It
// returns which.
func wait(cfg verifyConfig, pipe *pipeline, live *liveReader, total int, prog *progress, began time.Time) string {
	deadline := began.Add(cfg.timeout)
	plan := killPlan(cfg.kills, total)
	killWait := cfg.quiet / 2
	lastStart, atStart := time.Now(), 0
	status := func() {
		line := fmt.Sprintf("kdeliver verify: committed output holds %d/%d input records", live.distinct.Load(), total)
		if pipe != nil {
			line += fmt.Sprintf(", kills %d/%d", pipe.kills, cfg.kills)
		}
		prog.print(line + fmt.Sprintf(", %.0fs", time.Since(began).Seconds()))
	}
	status()
	lastStatus := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		<-tick.C
		now, got := time.Now(), int(live.distinct.Load())
		if now.Sub(lastStatus) >= prog.every {
			status()
			lastStatus = now
		}
		switch {
		case got >= total:
			return "every input record is in the committed output"
		case now.After(deadline):
			return fmt.Sprintf("timed out after %v (--timeout)", cfg.timeout)
		case now.Sub(later(live.lastNew(), lastStart)) >= cfg.quiet:
			return fmt.Sprintf("no new input record reached the committed output for %v (--quiet)", cfg.quiet)
		case pipe != nil && pipe.gone():
			return "the pipeline exited on its own"
		}
		if pipe == nil || pipe.kills >= len(plan) {
			continue
		}
		if got >= plan[pipe.kills] && got > atStart || now.Sub(lastStart) >= killWait {
			if err := pipe.kill(); err != nil {
				pipe.exitedEarly = err.Error()
				return "the pipeline could not be killed"
			}
			if err := pipe.start(); err != nil {
				pipe.exitedEarly = err.Error()
				return "the pipeline could not be started again"
			}
			lastStart, atStart = time.Now(), got
		}
	}
}

// killPlan returns how many input records must be in the committed output
// before each kill: evenly spread over the run, each moved at random by up
// to a quarter of the gap between two kills.
func killPlan(kills, total int) []int {
	plan := make([]int, kills)
	for i := range plan {
		share := (float64(i+1) + (rand.Float64()-0.5)/2) / float64(kills+1)
		plan[i] = max(1, int(math.Ceil(share*float64(total))))
	}
	return plan
}

// newRunID names a verify run: 8 random base-36 digits at most.
func newRunID() string { return strconv.FormatUint(rand.Uint64N(1<<40), 36) }

// seedInput writes n marked records of run to topic, acknowledged by every
// in-sync replica, and returns their sequence numbers.
func seedInput(ctx context.Context, brokers []string, c conn, topic, run string, n, keys int) ([]int64, error) {
	p, err := producer.New(brokers, kdeliver.AtLeastOnce, copier.With[producer.Option](c.opts, quiet, producer.WithKgoOpts(kgo.MetadataMinAge(time.Second)))...)
	if err != nil {
		return nil, err
	}
	defer p.Close(ctx)
	want := make([]int64, n)
	const chunk = 5000
	for from := 0; from < n; from += chunk {
		recs := make([]*kgo.Record, 0, min(chunk, n-from))
		for i := from; i < n && i < from+chunk; i++ {
			m := seedMark(run, int64(i), keys)
			want[i] = m.seq
			recs = append(recs, &kgo.Record{Topic: topic, Key: []byte(m.key), Value: []byte(m.String())})
		}
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := p.Send(sctx, recs...)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("seeding %s: %w", topic, err)
		}
	}
	return want, nil
}

// readInput reads the records of the latest verify run in topic (the run
// of the newest marked record) for --no-seed.
func readInput(ctx context.Context, brokers []string, c conn, topic string) (run string, want []int64, notes []string, err error) {
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	recs, err := kdelivertest.ReadCommittedRecords(rctx, brokers, topic, c.kgo...)
	if err != nil {
		return "", nil, nil, fmt.Errorf("reading the input %s: %w", topic, err)
	}
	var newest time.Time
	unmarked := 0
	for _, r := range recs {
		m, ok := parseMark(r.Value)
		if !ok {
			unmarked++
			continue
		}
		if run == "" || !r.Timestamp.Before(newest) {
			run, newest = m.run, r.Timestamp
		}
	}
	if run == "" {
		return "", nil, nil, fmt.Errorf("the input %s holds no record marked by kdeliver verify (%d records, none with a %q value): drop --no-seed to seed it", topic, len(recs), markPrefix+"RUN:SEQ:KEY:KSEQ")
	}
	others := 0
	for _, r := range recs {
		if m, ok := parseMark(r.Value); ok {
			if m.run == run {
				want = append(want, m.seq)
			} else {
				others++
			}
		}
	}
	if others > 0 {
		notes = append(notes, fmt.Sprintf("input: checked run %s, the newest; %d records of other runs ignored", run, others))
	}
	if unmarked > 0 {
		notes = append(notes, fmt.Sprintf("input: %d records without a kdeliver verify mark ignored", unmarked))
	}
	return run, want, notes, nil
}

// readAll reads the whole output topic, up to its last stable offset,
// with the isolation level.
func readAll(ctx context.Context, brokers []string, c conn, topic string, iso kgo.IsolationLevel) ([]outRecord, error) {
	recs, err := kdelivertest.ReadCommittedRecords(ctx, brokers, topic, append(c.kgo[:len(c.kgo):len(c.kgo)], kgo.FetchIsolationLevel(iso))...)
	if err != nil {
		return nil, fmt.Errorf("reading the output %s: %w", topic, err)
	}
	out := make([]outRecord, len(recs))
	for i, r := range recs {
		out[i] = outRecord{partition: r.Partition, offset: r.Offset, value: r.Value}
	}
	return out, nil
}

// liveReader follows the output with read_committed while the pipeline
// runs, counting the distinct input records of the run it has seen.
type liveReader struct {
	cl       *kgo.Client
	distinct atomic.Int64
	newest   atomic.Int64 // UnixNano of the last new record
	cancel   context.CancelFunc
	done     chan struct{}
}

func newLiveReader(brokers []string, c conn, topic, run string, want []int64) (*liveReader, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.MetadataMinAge(time.Second), kgo.DisableClientMetrics()}, c.kgo...)...)
	if err != nil {
		return nil, fmt.Errorf("reading the output %s: %w", topic, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &liveReader{cl: cl, cancel: cancel, done: make(chan struct{})}
	l.newest.Store(time.Now().UnixNano())
	expected := make(map[int64]bool, len(want))
	for _, s := range want {
		expected[s] = true
	}
	go func() {
		defer close(l.done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			fs.EachRecord(func(r *kgo.Record) {
				if m, ok := parseMark(r.Value); ok && m.run == run && expected[m.seq] {
					delete(expected, m.seq)
					l.distinct.Add(1)
					l.newest.Store(time.Now().UnixNano())
				}
			})
		}
	}()
	return l, nil
}

// lastNew is when the last new input record was seen.
func (l *liveReader) lastNew() time.Time { return time.Unix(0, l.newest.Load()) }

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (l *liveReader) close() {
	l.cancel()
	<-l.done
	l.cl.Close()
}

// pipeline is the user's pipeline, started with sh -c.
type pipeline struct {
	line string
	env  []string
	out  io.Writer

	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	err    error         // cmd.Wait's, once exited
	killed bool          // the current process was signalled by us

	kills, starts int
	exitedEarly   string // why the pipeline ended on its own, if it did
}

func (p *pipeline) start() error {
	cmd, err := shellCommand(p.line)
	if err != nil {
		return err
	}
	cmd.Env, cmd.Stdout, cmd.Stderr = p.env, p.out, p.out
	cmd.WaitDelay = 5 * time.Second // a daemonized child keeping the output open does not hold us
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the pipeline %q: %w", p.line, err)
	}
	p.cmd, p.exited, p.killed = cmd, make(chan struct{}), false
	p.starts++
	go func(exited chan struct{}) {
		p.err = cmd.Wait()
		close(exited)
	}(p.exited)
	return nil
}

// gone reports whether the pipeline exited without being signalled, and
// notes how.
func (p *pipeline) gone() bool {
	select {
	case <-p.exited:
	default:
		return false
	}
	if p.killed {
		return false
	}
	status := "status 0"
	if p.err != nil {
		status = p.err.Error()
	}
	p.exitedEarly = fmt.Sprintf("the pipeline exited on its own (%s) after start %d; verify stopped waiting", status, p.starts)
	return true
}

// kill SIGKILLs the pipeline's process group and waits for it to exit.
func (p *pipeline) kill() error {
	if err := p.signal(sigKILL, 15*time.Second); err != nil {
		return err
	}
	p.kills++
	return nil
}

// stop ends the pipeline: SIGTERM, then SIGKILL after grace. Safe twice.
func (p *pipeline) stop(grace time.Duration) error {
	if p.cmd == nil {
		return nil
	}
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := p.signal(sigTERM, grace); err == nil {
		return nil
	}
	return p.signal(sigKILL, 15*time.Second)
}

func (p *pipeline) signal(sig syscall.Signal, wait time.Duration) error {
	select {
	case <-p.exited:
		return nil // gone already: killing it is done
	default:
	}
	p.killed = true
	if err := signalGroup(p.cmd, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signalling the pipeline (%v): %w", sig, err)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-p.exited:
		return nil
	case <-t.C:
		return fmt.Errorf("the pipeline did not exit within %v of %v", wait, sig)
	}
}

func writeVerify(w io.Writer, r VerifyReport) {
	source := fmt.Sprintf("%d records of run %s seeded into %s", r.Expected, r.Run, r.Input)
	if !r.Seeded {
		source = fmt.Sprintf("%d records of run %s found in %s", r.Expected, r.Run, r.Input)
	}
	fmt.Fprintf(w, "kdeliver verify: %s, output %s, on the %s\n", source, r.Output, r.Cluster)
	if r.Pipeline != "" {
		fmt.Fprintf(w, "pipeline: %s: started %d times, SIGKILLed %d times\n", r.Pipeline, r.Starts, r.Kills)
	}
	fmt.Fprintf(w, "ended: %s, after %.1fs\n\n", r.Ended, r.Seconds)
	ex := func(seqs []int64) string {
		if len(seqs) == 0 {
			return ""
		}
		s := make([]string, len(seqs))
		for i, q := range seqs {
			s[i] = strconv.FormatInt(q, 10)
		}
		return "  e.g. " + strings.Join(s, " ")
	}
	const row = "%-16s %8d%s\n"
	fmt.Fprintf(w, row, "expected", r.Expected, "")
	fmt.Fprintf(w, row, "delivered once", r.DeliveredOnce, "")
	fmt.Fprintf(w, row, "lost", r.Lost, ex(r.Examples.Lost))
	fmt.Fprintf(w, row, "duplicated", r.Duplicated, fmt.Sprintf("  (%d extra copies)%s", r.ExtraCopies, ex(r.Examples.Duplicated)))
	fmt.Fprintf(w, row, "reordered", r.Reordered, ex(r.Examples.Reordered))
	fmt.Fprintf(w, row, "aborted reads", r.AbortedReads, ex(r.Examples.AbortedReads))
	fmt.Fprintf(w, "read committed %d, read uncommitted %d, other runs' records %d, unrecognized %d\n\n",
		r.ReadCommitted, r.ReadUncommitted, r.OtherRuns, r.Unrecognized)
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	promise := map[kdeliver.Semantics]string{
		kdeliver.ExactlyOnce: "none lost, none duplicated",
		kdeliver.AtLeastOnce: "none lost",
		kdeliver.AtMostOnce:  "none duplicated",
	}[r.Expect]
	if r.Ordered {
		promise += ", none reordered"
	}
	if r.Pass {
		fmt.Fprintf(w, "verdict: %s held (%s)\n", r.Expect, promise)
	} else {
		fmt.Fprintf(w, "verdict: %s BROKEN (%s): %s\n", r.Expect, promise, strings.Join(r.Failed, ", "))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "lost: not in the committed output; duplicated: in it more than once; reordered: a key's record delivered")
	fmt.Fprintln(w, "(first) after a later one of the same key in an output partition; aborted reads: output records only")
	fmt.Fprintln(w, "read_uncommitted readers see (aborted transactions): what a reader without read_committed would get extra")
}

const copySynopsis = `kdeliver verify copy [--mode eos|alo|amo] [--session-timeout D] [--txn-timeout D] [--delay D]

Copies $KDELIVER_INPUT to $KDELIVER_OUTPUT on $KDELIVER_BROKERS (group
$KDELIVER_GROUP) until SIGTERM or SIGINT: the pipeline kdeliver verify runs
when it is given none (see kdeliver verify -h). It connects as the
KDELIVER_TLS* and KDELIVER_SASL* variables verify sets say.`

func runVerifyCopy(args []string, stderr io.Writer) error {
	fs := newFlagSet("verify copy", copySynopsis, stderr)
	mode := fs.String("mode", "eos", "eos (an eos.Session), alo (at-least-once consumer and producer) or amo (at-most-once)")
	cfg := copier.Config{}
	fs.DurationVar(&cfg.SessionTimeout, "session-timeout", 10*time.Second, "group session timeout: how long a killed copier holds its partitions")
	fs.DurationVar(&cfg.TxnTimeout, "txn-timeout", 8*time.Second, "transaction timeout (eos), below the session timeout")
	fs.DurationVar(&cfg.CommitInterval, "commit-interval", 2*time.Second, "commit interval of alo: what a kill repeats")
	fs.DurationVar(&cfg.Delay, "delay", 0, "sleep per record copied, to spread a copy over a run")
	if err := fs.parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("verify copy takes no arguments, got %q", strings.Join(fs.Args(), " "))
	}
	var err error
	if cfg.Mode, err = copier.ParseMode(*mode); err != nil {
		return usagef("--mode: %v", err)
	}
	cfg.Brokers = exampleenv.SplitBrokers(os.Getenv(envBrokers))
	cfg.Input, cfg.Output, cfg.Group = os.Getenv(envInput), os.Getenv(envOutput), os.Getenv(envGroup)
	var missing []string
	for name, v := range map[string]string{envBrokers: strings.Join(cfg.Brokers, ","), envInput: cfg.Input, envOutput: cfg.Output, envGroup: cfg.Group} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return usagef("verify copy needs %s in its environment (kdeliver verify --run sets them)", strings.Join(slices.Sorted(slices.Values(missing)), ", "))
	}
	cf := connFromEnv(os.Getenv)
	c, err := cf.resolve(os.Getenv)
	if err != nil {
		return err
	}
	cfg.Conn = c.opts
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return copier.Run(ctx, cfg)
}

// lockedWriter serializes writes: the progress line and the pipeline's
// output share stderr.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// prefixWriter prefixes every line written through it.
type prefixWriter struct {
	w      io.Writer
	prefix string
	mu     sync.Mutex
	mid    bool // in the middle of a line
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]byte, 0, len(b)+len(p.prefix))
	for _, c := range b {
		if !p.mid {
			out = append(out, p.prefix...)
		}
		out = append(out, c)
		p.mid = c != '\n'
	}
	if _, err := p.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
