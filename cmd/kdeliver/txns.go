package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/internal/txnwatch"
)

const txnsSynopsis = `kdeliver txns list --brokers host:port,... [--hanging [--older-than D]] [--json] [--timeout D] [connection flags]
       kdeliver txns abort --brokers host:port,... --topic T --partition P [--producer-id ID] [--yes] [--timeout D] [connection flags]

txns list lists the open transactions the transaction coordinators know:
transactional ID, producer ID and epoch, state, partitions, start time and
duration. With --hanging it asks the partitions' leaders instead and lists
every partition with a transaction open whose producer last wrote to it
more than --older-than ago (15m, Kafka's default transaction.max.timeout.ms,
by default), like kafka-transactions.sh find-hanging: such a transaction
holds the partition's last stable offset, so read_committed consumers stop
there until it ends. Unlike find-hanging it also lists transactions the
coordinator still tracks (STATE Ongoing: the coordinator aborts them when
their transaction timeout expires, which may be 15 minutes away); those no
coordinator knows (TRANSACTIONAL ID -) only an abort ends.

txns abort aborts the transaction open on one partition the way
kafka-transactions.sh abort does: it writes an abort marker with the
producer ID, epoch and coordinator epoch the partition's leader reports,
which discards the transaction's records on that partition and lets
read_committed consumers go on. It asks for confirmation on stdin unless
--yes. Abort only the transaction of a producer that will not resume
(frozen, dead, or a transaction the coordinator lost): a producer that
resumes could still commit the rest of its transaction without the
records discarded here.

Exit status: 0 done, 1 failed (brokers unreachable, nothing to abort, not
confirmed), 2 bad command line.`

// openStates are the coordinator states of a transaction in progress.
var openStates = []string{"Ongoing", "PrepareCommit", "PrepareAbort", "PrepareEpochFence"}

// stdin is where txns abort reads its confirmation; tests replace it.
var stdin io.Reader = os.Stdin

func runTxns(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("txns needs a command: list or abort (kdeliver txns list -h)")
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "list":
		return runTxnsList(rest, stdout, stderr)
	case "abort":
		return runTxnsAbort(rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprintf(stdout, "Usage: %s\n", txnsSynopsis)
		return nil
	default:
		return usagef("unknown txns command %q: use list or abort", cmd)
	}
}

// txnsFlags are the flags both txns commands take.
type txnsFlags struct {
	brokers []string
	timeout time.Duration
	flags   connFlags
	conn    conn
}

func (c *txnsFlags) register(fs *flagSet) *string {
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "give up on the cluster after this long")
	c.flags.register(fs)
	return fs.String("brokers", "", "comma-separated seed brokers of the cluster (required)")
}

func (c *txnsFlags) check(cmd, brokers string) error {
	if brokers == "" {
		return usagef("txns %s needs --brokers host:port,...: the cluster whose transactions to %s (an embedded cluster has no hanging transactions)", cmd, cmd)
	}
	for _, b := range strings.Split(brokers, ",") {
		b = strings.TrimSpace(b)
		if b == "" {
			return usagef("--brokers %q has an empty address", brokers)
		}
		c.brokers = append(c.brokers, b)
	}
	if c.timeout <= 0 {
		return usagef("--timeout %v: use a positive duration", c.timeout)
	}
	var err error
	c.conn, err = c.flags.resolve(os.Getenv)
	return err
}

// admin connects to the cluster.
func (c *txnsFlags) admin() (*kadm.Client, func(), error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.brokers...), kgo.DialTimeout(5 * time.Second)}, c.conn.kgo...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", strings.Join(c.brokers, ","), err)
	}
	return kadm.NewClient(cl), cl.Close, nil
}

// unreachable names what to check when a request to the cluster failed.
func (c *txnsFlags) unreachable(what string, err error) error {
	check := "--brokers and that the cluster is up"
	if c.flags.set() {
		check = "--brokers, that the cluster is up, the --tls and --sasl flags, and the principal's ACLs (README: Connecting to a secured cluster)"
	}
	return fmt.Errorf("%s on %s: %w (check %s)", what, strings.Join(c.brokers, ","), err, check)
}

// ListedTxn is an open transaction in the output of `kdeliver txns list
// --json`: the coordinator's view.
type ListedTxn struct {
	TransactionalID string    `json:"transactional_id"`
	ProducerID      int64     `json:"producer_id"`
	ProducerEpoch   int16     `json:"producer_epoch"`
	State           string    `json:"state"`
	Coordinator     int32     `json:"coordinator"`
	Started         time.Time `json:"started"`
	DurationSeconds float64   `json:"duration_seconds"`
	TimeoutSeconds  float64   `json:"timeout_seconds"`
	Partitions      []string  `json:"partitions"` // topic[partition]
}

// HangingTxn is a partition held by an open transaction in the output of
// `kdeliver txns list --hanging --json`: the partition leader's view.
type HangingTxn struct {
	Topic            string    `json:"topic"`
	Partition        int32     `json:"partition"`
	StartOffset      int64     `json:"start_offset"`
	ProducerID       int64     `json:"producer_id"`
	ProducerEpoch    int16     `json:"producer_epoch"`
	CoordinatorEpoch int32     `json:"coordinator_epoch"`
	LastProduce      time.Time `json:"last_produce"`
	AgeSeconds       float64   `json:"age_seconds"`
	TransactionalID  string    `json:"transactional_id"` // "": no coordinator knows the producer ID
	State            string    `json:"state"`
}

func runTxnsList(args []string, stdout, stderr io.Writer) error {
	var c txnsFlags
	fs := newFlagSet("txns list", txnsSynopsis, stderr)
	brokers := c.register(fs)
	hanging := fs.Bool("hanging", false, "list the partitions held by a transaction older than --older-than, from the partitions' leaders")
	olderThan := fs.Duration("older-than", 15*time.Minute, "with --hanging: list transactions whose producer last wrote longer ago than this")
	asJSON := fs.Bool("json", false, "print a JSON array on stdout")
	if err := fs.parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case fs.NArg() > 0:
		return usagef("txns list takes no arguments, got %q", strings.Join(fs.Args(), " "))
	case set["older-than"] && !*hanging:
		return usagef("--older-than needs --hanging")
	case *olderThan < 0:
		return usagef("--older-than %v: use 0 or a positive duration", *olderThan)
	}
	if err := c.check("list", *brokers); err != nil {
		return err
	}
	adm, closeAdm, err := c.admin()
	if err != nil {
		return err
	}
	defer closeAdm()
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	now := time.Now()
	if *hanging {
		return listHanging(ctx, &c, adm, now, *olderThan, *asJSON, stdout)
	}

	listed, err := adm.ListTransactions(ctx, nil, openStates)
	if err != nil && len(listed) == 0 {
		return c.unreachable("list transactions", err)
	}
	var ids []string
	for _, l := range listed {
		if slices.Contains(openStates, l.State) { // brokers before 3.0 do not filter
			ids = append(ids, l.TxnID)
		}
	}
	var txns []ListedTxn
	if len(ids) > 0 {
		described, derr := adm.DescribeTransactions(ctx, ids...)
		if derr != nil && len(described) == 0 {
			return c.unreachable("describe transactions", derr)
		}
		err = errors.Join(err, derr)
		for _, d := range described.Sorted() {
			if d.Err != nil || !slices.Contains(openStates, d.State) {
				continue
			}
			t := ListedTxn{
				TransactionalID: d.TxnID, ProducerID: d.ProducerID, ProducerEpoch: d.ProducerEpoch,
				State: d.State, Coordinator: d.Coordinator,
				TimeoutSeconds: float64(d.TimeoutMillis) / 1000, Partitions: []string{},
			}
			if d.StartTimestamp > 0 {
				t.Started = time.UnixMilli(d.StartTimestamp).UTC()
				t.DurationSeconds = now.Sub(t.Started).Seconds()
			}
			for _, tp := range d.Topics.Sorted() {
				for _, p := range tp.Partitions {
					t.Partitions = append(t.Partitions, fmt.Sprintf("%s[%d]", tp.Topic, p))
				}
			}
			txns = append(txns, t)
		}
	}
	if *asJSON {
		if txns == nil {
			txns = []ListedTxn{}
		}
		if jerr := writeJSON(stdout, txns); jerr != nil {
			return jerr
		}
	} else if len(txns) == 0 {
		fmt.Fprintf(stdout, "no open transactions on %s\n", strings.Join(c.brokers, ","))
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TRANSACTIONAL ID\tPRODUCER ID\tEPOCH\tSTATE\tSTARTED\tDURATION\tTIMEOUT\tPARTITIONS")
		for _, t := range txns {
			started, dur := "-", "-"
			if !t.Started.IsZero() {
				started, dur = t.Started.Format(time.RFC3339), secs(t.DurationSeconds).String()
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", t.TransactionalID, t.ProducerID, t.ProducerEpoch, t.State,
				started, dur, secs(t.TimeoutSeconds), strings.Join(t.Partitions, ","))
		}
		tw.Flush()
	}
	if err != nil {
		return fmt.Errorf("the list may be incomplete: %w", err)
	}
	return nil
}

func listHanging(ctx context.Context, c *txnsFlags, adm *kadm.Client, now time.Time, olderThan time.Duration, asJSON bool, stdout io.Writer) error {
	open, err := txnwatch.OpenTransactions(ctx, adm, nil)
	if err != nil && len(open) == 0 {
		return c.unreachable("describe producers", err)
	}
	hanging := []HangingTxn{}
	for _, t := range open {
		age := now.Sub(t.LastProduce)
		if age < olderThan {
			continue
		}
		hanging = append(hanging, HangingTxn{
			Topic: t.Topic, Partition: t.Partition, StartOffset: t.StartOffset,
			ProducerID: t.ProducerID, ProducerEpoch: t.ProducerEpoch, CoordinatorEpoch: t.CoordinatorEpoch,
			LastProduce: t.LastProduce.UTC(), AgeSeconds: age.Seconds(),
			TransactionalID: t.TransactionalID, State: t.State,
		})
	}
	if asJSON {
		if jerr := writeJSON(stdout, hanging); jerr != nil {
			return jerr
		}
	} else if len(hanging) == 0 {
		fmt.Fprintf(stdout, "no partition of %s has a transaction open whose producer last wrote more than %v ago\n", strings.Join(c.brokers, ","), olderThan)
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TOPIC\tPARTITION\tSTART OFFSET\tPRODUCER ID\tEPOCH\tCOORDINATOR EPOCH\tLAST PRODUCE\tAGE\tTRANSACTIONAL ID\tSTATE")
		for _, h := range hanging {
			id, state := h.TransactionalID, h.State
			if id == "" {
				id, state = "-", "unknown to every coordinator"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", h.Topic, h.Partition, h.StartOffset, h.ProducerID, h.ProducerEpoch,
				h.CoordinatorEpoch, h.LastProduce.Format(time.RFC3339), secs(h.AgeSeconds), id, state)
		}
		tw.Flush()
		h := hanging[0]
		fmt.Fprintf(stdout, "\nread_committed consumers stop at each START OFFSET until its transaction ends. If its producer will not resume, abort it:\n"+
			"  kdeliver txns abort --brokers %s --topic %s --partition %d --producer-id %d\n",
			strings.Join(c.brokers, ","), h.Topic, h.Partition, h.ProducerID)
	}
	if err != nil {
		return fmt.Errorf("the list may be incomplete: %w", err)
	}
	return nil
}

func runTxnsAbort(args []string, stdout, stderr io.Writer) error {
	var c txnsFlags
	fs := newFlagSet("txns abort", txnsSynopsis, stderr)
	brokers := c.register(fs)
	topic := fs.String("topic", "", "topic of the partition (required)")
	partition := fs.Int("partition", -1, "partition held by the transaction (required)")
	producerID := fs.Int64("producer-id", -1, "producer ID of the transaction to abort (needed when several are open on the partition)")
	yes := fs.Bool("yes", false, "abort without asking for confirmation")
	if err := fs.parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return usagef("txns abort takes no arguments, got %q", strings.Join(fs.Args(), " "))
	case *topic == "":
		return usagef("txns abort needs --topic: the topic of the partition the transaction holds (kdeliver txns list --hanging names it)")
	case *partition < 0:
		return usagef("txns abort needs --partition P (0 or more): the partition the transaction holds (kdeliver txns list --hanging names it)")
	case *partition > 1<<31-1:
		return usagef("--partition %d is out of range", *partition)
	case *producerID < -1:
		return usagef("--producer-id %d: producer IDs are 0 or more", *producerID)
	}
	if err := c.check("abort", *brokers); err != nil {
		return err
	}
	adm, closeAdm, err := c.admin()
	if err != nil {
		return err
	}
	defer closeAdm()
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	p := int32(*partition)

	t, err := txnwatch.FindOpen(ctx, adm, *topic, p, *producerID)
	if err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "txnwatch: "))
	}
	fmt.Fprintf(stdout, "open transaction on %s\n", t)
	if !*yes {
		fmt.Fprintf(stdout, "abort it, discarding its records on %s[%d]? [y/N] ", t.Topic, t.Partition)
		answer, _ := bufio.NewReader(stdin).ReadString('\n')
		switch strings.ToLower(strings.TrimSpace(answer)) {
		case "y", "yes":
		default:
			return fmt.Errorf("not aborted: answered %q (answer y to abort, or pass --yes)", strings.TrimSpace(answer))
		}
	}
	t, err = txnwatch.Abort(ctx, adm, t.Topic, t.Partition, t.ProducerID)
	if err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "txnwatch: "))
	}
	fmt.Fprintf(stdout, "aborted the transaction of producer ID %d epoch %d on %s[%d] (from offset %d)",
		t.ProducerID, t.ProducerEpoch, t.Topic, t.Partition, t.StartOffset)
	if lso, err := adm.ListCommittedOffsets(ctx, t.Topic); err == nil {
		if o, ok := lso.Lookup(t.Topic, t.Partition); ok && o.Err == nil {
			fmt.Fprintf(stdout, "; its last stable offset is now %d", o.Offset)
		}
	}
	fmt.Fprintln(stdout)
	return nil
}

// secs is a duration in seconds, printed rounded.
type secs float64

func (s secs) String() string {
	d := time.Duration(float64(s) * float64(time.Second))
	return round(d).String()
}

func round(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Second)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
