package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/exampleenv"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

const demoSynopsis = `kdeliver demo [--brokers host:port,... [connection flags]] [--records N] [--semantics S,...] [--json]

For each semantics, sends N numbered records through a producer whose
acknowledgements are lost on purpose now and then, reads them through a
consumer that is crashed mid-batch a few times and restarted, and counts by
sequence number what the consumer's handler saw. Exactly-once writes with a
transactional producer (aborting two transactions on purpose), copies the
records through an eos.Session crashed mid-transaction, and counts what a
read_committed reader of the copy sees. With no --brokers it runs on
an embedded in-process cluster (kfake, 3 brokers on 127.0.0.1), where the
faults are injected; on a real cluster only the consumer crashes are.

Exit status: 0 when every semantics kept its guarantee, 1 when one did not
(or the demo could not run), 2 for a bad command line.`

// demoConfig is the demo's command line.
type demoConfig struct {
	brokers    []string // empty: embedded cluster
	records    int
	sems       []kdeliver.Semantics
	json       bool
	seed       uint64
	crashes    int
	partitions int
	timeout    time.Duration
	conn       conn // with brokers: how to connect to them
}

// semanticsList is a repeatable, comma-separated --semantics flag.
type semanticsList struct{ list *[]kdeliver.Semantics }

func (s semanticsList) String() string {
	if s.list == nil {
		return ""
	}
	names := make([]string, len(*s.list))
	for i, v := range *s.list {
		names[i] = v.String()
	}
	return strings.Join(names, ",")
}

func (s semanticsList) Set(text string) error {
	for _, part := range strings.Split(text, ",") {
		v, err := kdeliver.ParseSemantics(part)
		if err != nil {
			return errors.New(strings.TrimPrefix(err.Error(), kdeliver.ErrInvalidConfig.Error()+": "))
		}
		*s.list = append(*s.list, v)
	}
	return nil
}

func parseDemo(args []string, stderr io.Writer) (demoConfig, error) {
	cfg := demoConfig{}
	fs := newFlagSet("demo", demoSynopsis, stderr)
	brokers := fs.String("brokers", "", "comma-separated seed brokers of a real cluster (default: an embedded kfake cluster)")
	fs.IntVar(&cfg.records, "records", 10000, "numbered records to send per semantics")
	fs.Var(semanticsList{&cfg.sems}, "semantics", "semantics to run, comma-separated or repeated (default: all three)")
	fs.BoolVar(&cfg.json, "json", false, "print the result as JSON on stdout")
	fs.Uint64Var(&cfg.seed, "seed", 1, "seed of the fault and crash plan")
	fs.IntVar(&cfg.crashes, "crashes", 3, "times the consumer is crashed mid-batch per semantics")
	fs.IntVar(&cfg.partitions, "partitions", 6, "partitions of each demo topic")
	fs.DurationVar(&cfg.timeout, "timeout", 3*time.Minute, "give up on a semantics after this long")
	var cf connFlags
	cf.register(fs)
	if err := fs.parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, usagef("demo takes no arguments, got %q", strings.Join(fs.Args(), " "))
	}
	if *brokers != "" {
		for _, b := range strings.Split(*brokers, ",") {
			b = strings.TrimSpace(b)
			if b == "" {
				return cfg, usagef("--brokers %q has an empty address", *brokers)
			}
			cfg.brokers = append(cfg.brokers, b)
		}
	}
	switch {
	case cfg.records < 10:
		return cfg, usagef("--records %d: use at least 10", cfg.records)
	case cfg.crashes < 0:
		return cfg, usagef("--crashes %d: use 0 or more", cfg.crashes)
	case cfg.partitions < 1:
		return cfg, usagef("--partitions %d: use at least 1", cfg.partitions)
	case cfg.timeout <= 0:
		return cfg, usagef("--timeout %v: use a positive duration", cfg.timeout)
	}
	if len(cfg.sems) == 0 {
		cfg.sems = kdeliver.All
	}
	cfg.sems = dedupSems(cfg.sems)
	if len(cfg.brokers) == 0 {
		return cfg, cf.noConnOnEmbedded("demo")
	}
	var err error
	cfg.conn, err = cf.resolve(os.Getenv)
	return cfg, err
}

func dedupSems(in []kdeliver.Semantics) []kdeliver.Semantics {
	var out []kdeliver.Semantics
	for _, s := range kdeliver.All {
		for _, v := range in {
			if v == s {
				out = append(out, s)
				break
			}
		}
	}
	return out
}

// Row is one semantics' result. Its JSON form is part of `kdeliver demo
// --json`.
type Row struct {
	Semantics     kdeliver.Semantics `json:"semantics"`
	Produced      int                `json:"produced"`
	Acknowledged  int                `json:"acknowledged"`
	DeliveredOnce int                `json:"delivered_once"`
	Lost          int                `json:"lost"`
	Duplicated    int                `json:"duplicated"`
	RecordsPerSec float64            `json:"records_per_second"`

	// InLog is the number of records in the topic's log after producing
	// (sum of high watermarks minus log starts), acknowledged or not; nil
	// for exactly-once, whose log also holds aborted records and
	// transaction markers.
	InLog *int `json:"in_log,omitempty"`
	// RefusedByFaults is the number of records in the produce requests
	// the injected faults refused unwritten (at-most-once on the embedded
	// cluster).
	RefusedByFaults int `json:"refused_by_faults"`
	// LostByBroker is the number of acknowledged records missing from the
	// log that no injected fault refused: the broker dropped them on its
	// own (acks=0 requests on a connection it closed).
	LostByBroker int `json:"lost_by_broker"`
	// LostByConsumer is the number of lost records that were in the log:
	// the consumer's crashes skipped them.
	LostByConsumer int `json:"lost_by_consumer"`

	Handled            int64   `json:"handler_calls"`
	FaultsInjected     int     `json:"faults_injected"`
	ConsumerCrashes    int     `json:"consumer_crashes"`
	AbortedTxns        int     `json:"aborted_transactions"`
	Seconds            float64 `json:"seconds"`
	Guarantee          string  `json:"guarantee"`
	GuaranteeHeld      bool    `json:"guarantee_held"`
	ShowedExpectedRisk bool    `json:"showed_expected_risk"`
	Note               string  `json:"note,omitempty"`
}

// Report is the JSON output of the demo.
type Report struct {
	Cluster        string `json:"cluster"`
	FaultsInjected bool   `json:"faults_injected"`
	Records        int    `json:"records"`
	Crashes        int    `json:"crashes"` // planned consumer crashes per semantics (--crashes)
	Seed           uint64 `json:"seed"`
	Rows           []Row  `json:"rows"`
	OK             bool   `json:"ok"`

	onCluster string // Cluster with its article, for the table's header
}

func runDemo(args []string, stdout, stderr io.Writer) error {
	cfg, err := parseDemo(args, stderr)
	if err != nil {
		return err
	}
	ctx := context.Background()

	env := &demoEnv{cfg: cfg, runID: strconv.FormatInt(time.Now().UnixNano()%1e9, 36)}
	if len(cfg.brokers) == 0 {
		cl, err := kdelivertest.NewCluster()
		if err != nil {
			return err
		}
		defer cl.Close()
		env.brokers, env.kfake, env.idle = cl.Brokers(), cl.Kfake(), time.Second
		env.cluster = "embedded kfake cluster (3 brokers on 127.0.0.1)"
		env.onCluster = "an " + env.cluster
	} else {
		if err := exampleenv.CreateTopicsWith(ctx, cfg.brokers, cfg.conn.kgo, 0); err != nil { // a ping: no topics yet
			return err
		}
		env.brokers, env.idle = cfg.brokers, 15*time.Second
		env.cluster = "cluster at " + strings.Join(cfg.brokers, ",")
		env.onCluster = "the " + env.cluster
	}

	env.admin, err = kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(env.brokers...)}, cfg.conn.kgo...)...)
	if err != nil {
		return err
	}
	defer env.admin.Close()

	prog := newProgress(stderr)
	rep := Report{Cluster: env.cluster, FaultsInjected: env.kfake != nil, Records: cfg.records, Crashes: cfg.crashes, Seed: cfg.seed, OK: true,
		onCluster: env.onCluster}
	for i, sem := range cfg.sems {
		rng := rand.New(rand.NewPCG(cfg.seed, uint64(i)+1))
		row, err := env.runRow(ctx, sem, rng, prog)
		if err != nil {
			prog.clear()
			return fmt.Errorf("%s: %w", sem, err)
		}
		rep.Rows = append(rep.Rows, row)
		rep.OK = rep.OK && row.GuaranteeHeld
	}
	prog.clear()

	if cfg.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		writeTable(stdout, rep)
	}
	if !rep.OK {
		for _, r := range rep.Rows {
			if !r.GuaranteeHeld {
				fmt.Fprintf(stderr, "kdeliver: %s broke its guarantee (%s): lost %d, duplicated %d\n", r.Semantics, r.Guarantee, r.Lost, r.Duplicated)
			}
		}
		return errReported
	}
	return nil
}

// guarantee says what sem promises, in the demo's terms, and checks it.
func guarantee(sem kdeliver.Semantics, r Row) (promise string, held, showedRisk bool) {
	switch sem {
	case kdeliver.AtMostOnce:
		return "no duplicates", r.Duplicated == 0, r.Lost > 0
	case kdeliver.AtLeastOnce:
		return "no loss", r.Lost == 0, r.Duplicated > 0
	default:
		return "no loss, no duplicates", r.Lost == 0 && r.Duplicated == 0, true
	}
}

func writeTable(w io.Writer, rep Report) {
	fmt.Fprintf(w, "kdeliver demo: %d numbered records per semantics on %s\n", rep.Records, rep.onCluster)
	var lines []string
	if rep.FaultsInjected {
		lines = append(lines, "faults: produce acknowledgements lost on purpose (the broker writes the batch, then answers REQUEST_TIMED_OUT)",
			"        at-most-once has no acknowledgement to lose (acks=0), so its produce requests are refused unwritten instead")
		if rep.Crashes > 0 {
			lines = append(lines, "        the consumer is crashed mid-batch and restarted")
		}
	} else {
		lines = append(lines, "faults: none injected into the brokers (a real cluster: kfake's fault injection is not available)")
		if rep.Crashes > 0 {
			lines = append(lines, "        the consumer is still crashed mid-batch and restarted")
		}
	}
	fmt.Fprintln(w, strings.Join(lines, ";\n")+".")
	fmt.Fprintln(w)
	const format = "%-14s %9v %13v %7v %15v %6v %11v %10v  %s\n"
	fmt.Fprintf(w, format, "semantics", "produced", "acknowledged", "in log", "delivered once", "lost", "duplicated", "records/s", "guarantee")
	for _, r := range rep.Rows {
		held := "held"
		if !r.GuaranteeHeld {
			held = "BROKEN"
		}
		inLog := "-"
		if r.InLog != nil {
			inLog = strconv.Itoa(*r.InLog)
		}
		fmt.Fprintf(w, format, r.Semantics, r.Produced, r.Acknowledged, inLog, r.DeliveredOnce, r.Lost, r.Duplicated,
			fmt.Sprintf("%.0f", r.RecordsPerSec), r.Guarantee+": "+held)
	}
	fmt.Fprintln(w)
	for _, r := range rep.Rows {
		fmt.Fprintf(w, "%s: %s\n", r.Semantics, r.Note)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "produced        records sent, numbered 0..N-1 (the number is the record's value)")
	fmt.Fprintln(w, "acknowledged    records whose produce reported success: at-most-once, written to the connection (acks=0);")
	fmt.Fprintln(w, "                at-least-once, acknowledged by all in-sync replicas; exactly-once, in a committed transaction")
	fmt.Fprintln(w, "in log          records in the topic's log once delivery ended (high watermarks), acknowledged or not;")
	fmt.Fprintln(w, "                not counted for exactly-once, whose log also holds aborted records and transaction markers")
	fmt.Fprintln(w, "delivered once  numbers the consumer's handler processed exactly once; exactly-once: numbers found exactly once")
	fmt.Fprintln(w, "                in the committed output of an eos.Session that copies the records (read with read_committed)")
	fmt.Fprintln(w, "lost            acknowledged numbers the handler never processed (the notes say why)")
	fmt.Fprintln(w, "duplicated      numbers the handler processed more than once")
	fmt.Fprintln(w, "records/s       distinct numbers delivered per second, first send to last delivery, faults and restarts")
	fmt.Fprintln(w, "                included (not a benchmark: see BENCHMARKS.md)")
}

// demoEnv is what every row shares.
type demoEnv struct {
	cfg       demoConfig
	brokers   []string
	kfake     *kfake.Cluster // nil on a real cluster
	admin     *kgo.Client    // topics, metadata and offsets
	cluster   string
	onCluster string        // cluster with its article: "an embedded ...", "the cluster at ..."
	idle      time.Duration // no progress this long after the last send: delivery is over
	runID     string
}

// createTopic creates a demo topic and waits until every one of its
// partitions takes writes (see waitWritable).
func (e *demoEnv) createTopic(ctx context.Context, topic string) error {
	var err error
	if e.kfake != nil {
		err = e.kfake.CreateTopic(topic, int32(e.cfg.partitions), nil)
	} else {
		err = exampleenv.CreateTopicsWith(ctx, e.brokers, e.cfg.conn.kgo, int32(e.cfg.partitions), topic)
	}
	if err != nil {
		return err
	}
	return waitWritable(ctx, e.admin, topic, e.cfg.partitions)
}

// deleteTopic removes a demo topic from a real cluster, best effort.
func (e *demoEnv) deleteTopic(ctx context.Context, topic string) {
	if e.kfake != nil {
		return // the embedded cluster goes away with the demo
	}
	req := kmsg.NewPtrDeleteTopicsRequest()
	req.TopicNames = []string{topic}
	t := kmsg.NewDeleteTopicsRequestTopic()
	t.Topic = &topic
	req.Topics = append(req.Topics, t)
	req.TimeoutMillis = 10000
	_, _ = req.RequestWith(ctx, e.admin)
}
