// Command metrics serves kdeliver's guarantee metrics to Prometheus while a
// pipeline under injected faults makes them move.
//
// It installs the OpenTelemetry SDK's meter provider with its Prometheus
// exporter, passes it to every client with kdeliver.WithMeterProvider, and
// serves /metrics on --listen (127.0.0.1:9464 by default). The pipeline runs
// on an embedded cluster (kfake) unless --brokers names a real one:
//
//   - a producer (at least once) writes --records orders; on the embedded
//     cluster --lost-acks of its produce requests fail and are retried;
//   - a consumer with a dedup guard (consumer.NewWithGuard over
//     dedup.NewMemory: at-least-once delivery whose side effects run once)
//     handles them, and is crashed after --redeliveries records handled and
//     not committed; the consumer started after it is handed those records
//     again, and its guard absorbs each as a duplicate;
//   - an eos.Session copies the orders to a second topic, its handler
//     failing --handler-failures times (each failure aborts a transaction,
//     cause "handler");
//   - once every record is committed, the lag of each partition is 0.
//
// With --once it does that once, prints the figures (from the clients'
// Stats methods) and keeps serving until SIGINT or --serve-for; without it,
// it does it again every --every, with new orders. SIGINT stops it cleanly
// at any point:
//
//	cd examples/metrics && go run . --once
//	curl -s 127.0.0.1:9464/metrics | grep '^kdeliver_'
//
// grafana-dashboard.json beside this file charts the series.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/eos"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/internal/exampleenv"
	"github.com/kdeliver/kdeliver/kdelivertest"
	"github.com/kdeliver/kdeliver/producer"
)

// partitions is the partition count of both topics.
const partitions = 3

// waitLimit bounds each wait of a round: for a crash, for the pipeline to
// catch up.
const waitLimit = 60 * time.Second

type config struct {
	listen          string
	brokers         []string
	once            bool
	serveFor        time.Duration
	every           time.Duration
	records         int
	redeliveries    int
	handlerFailures int
	lostAcks        int

	// afterRound, if set, is called with each round's figures, after they
	// are printed (the tests wait for it).
	afterRound func(Figures)
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("metrics", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("brokers", "", "comma-separated brokers of a real cluster (default: an embedded one, where produce faults are injected too)")
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:9464", "address to serve /metrics on")
	fs.BoolVar(&cfg.once, "once", false, "inject the faults once, print the figures, then serve until SIGINT or --serve-for")
	fs.DurationVar(&cfg.serveFor, "serve-for", 0, "with --once: stop serving after this long (0: until SIGINT)")
	fs.DurationVar(&cfg.every, "every", 15*time.Second, "without --once: pause between rounds of faults")
	fs.IntVar(&cfg.records, "records", 300, "orders produced per round")
	fs.IntVar(&cfg.redeliveries, "redeliveries", 25, "records the crashed consumer handled and did not commit, redelivered to the next one (its guard's duplicates)")
	fs.IntVar(&cfg.handlerFailures, "handler-failures", 4, "eos handler failures per round (transactions aborted, cause handler)")
	fs.IntVar(&cfg.lostAcks, "lost-acks", 3, "produce requests failed per round on the embedded cluster (retried by the producer)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	cfg.brokers = exampleenv.SplitBrokers(*brokers)
	var problems []string
	if cfg.records < 1 {
		problems = append(problems, fmt.Sprintf("--records %d: use at least 1", cfg.records))
	}
	if cfg.redeliveries < 0 || cfg.redeliveries >= cfg.records {
		problems = append(problems, fmt.Sprintf("--redeliveries %d: use 0 to --records minus 1 (%d)", cfg.redeliveries, cfg.records-1))
	}
	if cfg.handlerFailures < 0 || cfg.handlerFailures > cfg.records {
		problems = append(problems, fmt.Sprintf("--handler-failures %d: use 0 to --records (%d)", cfg.handlerFailures, cfg.records))
	}
	if cfg.lostAcks < 0 {
		problems = append(problems, fmt.Sprintf("--lost-acks %d: use 0 or more", cfg.lostAcks))
	}
	if cfg.serveFor < 0 || cfg.every < 0 {
		problems = append(problems, "--serve-for and --every: use durations of 0 or more")
	}
	if len(problems) > 0 {
		return cfg, errors.New(strings.Join(problems, "; "))
	}
	return cfg, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "metrics:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", cfg.listen)
	if err == nil {
		err = run(ctx, cfg, ln, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "metrics:", err)
		stop()
		os.Exit(1)
	}
}

// run serves the metrics on ln and runs the pipeline until ctx ends (nil
// then) or, with --once and --serve-for, until that elapses.
func run(ctx context.Context, cfg config, ln net.Listener, w io.Writer) (err error) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg),
		// The default of this exporter version, said explicitly: names
		// with underscores and unit and _total suffixes.
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes))
	if err != nil {
		ln.Close()
		return err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter),
		sdkmetric.WithResource(resource.NewSchemaless(attribute.String("service.name", "kdeliver-example-metrics"))))
	defer func() { err = errors.Join(err, mp.Shutdown(context.WithoutCancel(ctx))) }()

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		err = errors.Join(err, srv.Shutdown(sctx))
		if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
	}()
	fmt.Fprintf(w, "serving http://%s/metrics\n", ln.Addr())

	p, err := newPipeline(ctx, cfg, mp)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}
	defer func() { err = errors.Join(err, p.close(context.WithoutCancel(ctx))) }()
	if p.kfake == nil {
		fmt.Fprintf(w, "cluster %s: produce faults are injected on the embedded cluster only\n", strings.Join(p.brokers, ","))
	}

	for round := 1; ; round++ {
		f, err := p.round(ctx, round)
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopped
			}
			return err
		}
		f.print(w)
		if cfg.afterRound != nil {
			cfg.afterRound(f)
		}
		if cfg.once {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-p.sessionRun.done:
			return fmt.Errorf("the eos session stopped: %v", p.sessionRun.err)
		case <-time.After(cfg.every):
		}
	}
	var elapsed <-chan time.Time // nil: never
	if cfg.serveFor > 0 {
		elapsed = time.After(cfg.serveFor)
		fmt.Fprintf(w, "serving for %s or until interrupted\n", cfg.serveFor)
	} else {
		fmt.Fprintln(w, "serving until interrupted")
	}
	select {
	case <-ctx.Done():
	case <-elapsed:
	case <-p.sessionRun.done:
		return fmt.Errorf("the eos session stopped: %v", p.sessionRun.err)
	}
	return nil
}

// pipeline is the producer, the guard consumer and the eos copier, with
// the faults each round injects.
type pipeline struct {
	cfg     config
	brokers []string
	cluster *kdelivertest.Cluster // the embedded cluster, or nil
	kfake   *kfake.Cluster        // its fault injection, or nil
	adm     *kadm.Client
	admCl   *kgo.Client
	mp      *sdkmetric.MeterProvider
	log     *slog.Logger

	in, out, group, copierGroup string

	prod  *producer.Producer
	guard *dedup.Guard

	// The consumer that runs between rounds (it absorbed the last round's
	// redeliveries): stopped at the start of the next round.
	cur    *consumer.Consumer
	curRun *background

	mu      sync.Mutex
	effects map[int]int  // side effects of the guard consumer by order number
	failing map[int]bool // orders whose next eos handler call fails

	session    *eos.Session
	sessionRun *background
}

// background is a Run in its own goroutine.
type background struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
	err    error         // what it returned; read after done
}

func start(ctx context.Context, run func(context.Context) error) *background {
	ctx, cancel := context.WithCancel(ctx)
	b := &background{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(b.done)
		b.err = run(ctx)
	}()
	return b
}

// stop cancels the Run and returns what it returned.
func (b *background) stop() error {
	b.cancel()
	<-b.done
	return b.err
}

func newPipeline(ctx context.Context, cfg config, mp *sdkmetric.MeterProvider) (_ *pipeline, err error) {
	p := &pipeline{cfg: cfg, mp: mp, effects: map[int]int{}, failing: map[int]bool{},
		log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.close(context.WithoutCancel(ctx)))
		}
	}()
	// Fresh names, so that a rerun on a real cluster starts clean.
	id := strconv.FormatInt(time.Now().UnixNano(), 36)
	p.in, p.out = "orders-"+id, "orders-copied-"+id
	p.group, p.copierGroup = "orders-guarded-"+id, "orders-copier-"+id
	if len(cfg.brokers) == 0 {
		c, err := kdelivertest.NewCluster(kdelivertest.WithTopic(p.in, partitions), kdelivertest.WithTopic(p.out, partitions))
		if err != nil {
			return nil, err
		}
		p.cluster, p.kfake, p.brokers = c, c.Kfake(), c.Brokers()
	} else {
		if err := exampleenv.CreateTopics(ctx, cfg.brokers, partitions, p.in, p.out); err != nil {
			return nil, err
		}
		p.brokers = cfg.brokers
	}
	if p.admCl, err = kgo.NewClient(kgo.SeedBrokers(p.brokers...), kgo.DisableClientMetrics()); err != nil {
		return nil, err
	}
	p.adm = kadm.NewClient(p.admCl)
	if p.prod, err = producer.New(p.brokers, kdeliver.AtLeastOnce, kdeliver.WithMeterProvider(mp), kdeliver.WithLogger(p.log),
		producer.WithMessageIDs(), // the guard's key: the same on every delivery of an order
		producer.WithKgoOpts(kgo.RetryBackoffFn(func(int) time.Duration { return 20 * time.Millisecond }))); err != nil {
		return nil, err
	}
	if p.guard, err = dedup.NewGuard(dedup.NewMemory(1_000_000), "orders-effect", dedup.WithLease(5*time.Second), kdeliver.WithLogger(p.log)); err != nil {
		return nil, err
	}
	sopts := []eos.Option{kdeliver.WithMeterProvider(mp), kdeliver.WithLogger(p.log),
		kdeliver.WithBackoff(10*time.Millisecond, 100*time.Millisecond), eos.WithOutputTopic(p.out)}
	if p.kfake != nil {
		// kfake accepts a short session timeout (the transaction timeout
		// must be below it): a restart rejoins fast.
		sopts = append(sopts, eos.WithSessionTimeout(2*time.Second), eos.WithTransactionTimeout(time.Second),
			eos.WithKgoOpts(p.fastOpts()...))
	}
	if p.session, err = eos.New(p.brokers, p.copierGroup, []string{p.in}, "orders-copier-"+id, sopts...); err != nil {
		return nil, err
	}
	p.sessionRun = start(ctx, func(ctx context.Context) error { return p.session.Run(ctx, p.copy) })
	return p, nil
}

// fastOpts make group joins, retries and metadata quick on the embedded
// cluster; a real cluster keeps kgo's defaults.
func (p *pipeline) fastOpts() []kgo.Opt {
	if p.kfake == nil {
		return nil
	}
	return []kgo.Opt{
		kgo.MetadataMinAge(100 * time.Millisecond),
		kgo.HeartbeatInterval(100 * time.Millisecond),
		kgo.FetchMaxWait(100 * time.Millisecond),
		kgo.RetryBackoffFn(func(int) time.Duration { return 20 * time.Millisecond }),
	}
}

// copy is the eos handler: it copies an order, failing once for each order
// a round planned a failure for.
func (p *pipeline) copy(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
	seq, err := strconv.Atoi(string(in.Value))
	if err != nil {
		return err
	}
	p.mu.Lock()
	fail := p.failing[seq]
	delete(p.failing, seq)
	p.mu.Unlock()
	if fail {
		return fmt.Errorf("order %d: injected handler failure", seq)
	}
	emit(&kgo.Record{Key: in.Key, Value: in.Value})
	return nil
}

// effect is the guard consumer's side effect: it counts the order.
func (p *pipeline) effect(rec *kgo.Record) error {
	seq, err := strconv.Atoi(string(rec.Value))
	if err != nil {
		return consumer.Skip(err)
	}
	p.mu.Lock()
	p.effects[seq]++
	p.mu.Unlock()
	return nil
}

// newConsumer builds a guard consumer of the orders. commitEvery is its
// commit interval.
func (p *pipeline) newConsumer(commitEvery time.Duration) (*consumer.Consumer, error) {
	opts := []consumer.Option{kdeliver.WithMeterProvider(p.mp), kdeliver.WithLogger(p.log),
		kdeliver.WithBackoff(10*time.Millisecond, 100*time.Millisecond), consumer.WithCommitInterval(commitEvery)}
	if kopts := p.fastOpts(); kopts != nil {
		opts = append(opts, consumer.WithKgoOpts(append(kopts, kgo.SessionTimeout(time.Second))...))
	}
	return consumer.NewWithGuard(p.brokers, p.group, []string{p.in}, p.guard, opts...)
}

// Figures are what one round did, from the clients' Stats.
type Figures struct {
	Round int
	// Produced is the orders produced this round (and every round
	// before), FaultedProduces the produce requests failed on the
	// embedded cluster this round.
	Produced, FaultedProduces int
	// Redeliveries is the records the crashed consumer handled and did
	// not commit, this round; HandlerFailures the eos handler failures
	// injected this round.
	Redeliveries, HandlerFailures int
	// Repeated is the side effects of the guard consumer that ran more
	// than once (0: the guard absorbed every redelivery).
	Repeated int
	Producer producer.Stats
	Consumer consumer.Stats // the consumer started after the crash
	Guard    dedup.GuardStats
	Session  eos.Stats
}

func (f Figures) print(w io.Writer) {
	var parts []string
	for _, ps := range f.Consumer.Lag {
		for part, l := range ps {
			parts = append(parts, fmt.Sprintf("%d:%d", part, l))
		}
	}
	sort.Strings(parts)
	fmt.Fprintf(w, "round %d: %d orders produced in all; %d produce requests failed this round and were retried\n", f.Round, f.Produced, f.FaultedProduces)
	fmt.Fprintf(w, "  producer:       %d delivered, %d failed, %d request errors\n", f.Producer.Delivered, f.Producer.Failed, f.Producer.RequestErrors)
	fmt.Fprintf(w, "  guard consumer: crashed with %d records handled and not committed; the next one handled %d, the guard absorbing the %d redelivered as duplicates (%d in all); %d side effects ran twice; lag by partition %s\n",
		f.Redeliveries, f.Consumer.Handled, f.Redeliveries, f.Guard.Duplicates, f.Repeated, strings.Join(parts, " "))
	fmt.Fprintf(w, "  eos copier:     %d handler failures injected; transactions in all: %d committed, %d aborted, %d of them by the handler; %d records copied\n",
		f.HandlerFailures, f.Session.Committed, f.Session.Aborted, f.Session.AbortedHandler, f.Session.Records)
}

// round produces the round's orders and injects the round's faults, and
// returns the figures once every order is handled, copied and committed.
func (p *pipeline) round(ctx context.Context, round int) (Figures, error) {
	f := Figures{Round: round, HandlerFailures: p.cfg.handlerFailures}
	if err := p.stopCurrent(ctx); err != nil {
		return f, err
	}
	startDups, startAborts := p.guard.Stats().Duplicates, p.session.Stats().AbortedHandler

	// The orders of this round, and which of them fail once in the copier:
	// spread evenly.
	n := p.cfg.records
	base := (round - 1) * n
	p.mu.Lock()
	for i := range p.cfg.handlerFailures {
		p.failing[base+i*n/p.cfg.handlerFailures] = true
	}
	p.mu.Unlock()
	recs := make([]*kgo.Record, n)
	for i := range recs {
		v := strconv.Itoa(base + i)
		recs[i] = &kgo.Record{Topic: p.in, Key: []byte(v), Value: []byte(v)}
	}
	var faults *kfake.FaultHandle
	if p.kfake != nil && p.cfg.lostAcks > 0 {
		faults = p.kfake.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: p.in, Err: kerr.RequestTimedOut, Count: p.cfg.lostAcks})
	}
	err := p.prod.Send(ctx, recs...)
	if faults != nil {
		f.FaultedProduces = faults.Hits()
		faults.Remove()
	}
	if err != nil {
		return f, fmt.Errorf("producing the orders: %w", err)
	}
	f.Produced = base + n

	redelivered, err := p.crashRun(ctx)
	if err != nil {
		return f, err
	}
	f.Redeliveries = redelivered

	// The consumer after the crash: handed the records again, its guard
	// skips the ones done.
	c, err := p.newConsumer(consumer.DefaultCommitInterval)
	if err != nil {
		return f, err
	}
	p.cur = c
	p.curRun = start(ctx, func(ctx context.Context) error {
		return c.Run(ctx, func(_ context.Context, rec *kgo.Record) error { return p.effect(rec) })
	})

	if err := p.waitCaughtUp(ctx, c, startAborts); err != nil {
		return f, err
	}
	f.Producer, f.Consumer, f.Guard, f.Session = p.prod.Stats(), c.Stats(), p.guard.Stats(), p.session.Stats()
	p.mu.Lock()
	for _, k := range p.effects {
		if k > 1 {
			f.Repeated++
		}
	}
	p.mu.Unlock()
	if dups := f.Guard.Duplicates - startDups; dups != int64(f.Redeliveries) {
		return f, fmt.Errorf("round %d: the guard absorbed %d duplicates, want the %d records redelivered", round, dups, f.Redeliveries)
	}
	if aborts := f.Session.AbortedHandler - startAborts; aborts != int64(p.cfg.handlerFailures) {
		return f, fmt.Errorf("round %d: %d transactions aborted by the handler, want the %d failures injected", round, aborts, p.cfg.handlerFailures)
	}
	return f, nil
}

// crashRun runs a guard consumer that is crashed once it holds
// --redeliveries records handled and not committed (as if the process died
// there: no commit), and returns how many records it left so, which the
// next consumer of the group is handed again.
func (p *pipeline) crashRun(ctx context.Context) (int, error) {
	// A long commit interval: the consumer commits only when it has caught
	// up with what it fetched, so the crash finds records not committed.
	c, err := p.newConsumer(time.Hour)
	if err != nil {
		return 0, err
	}
	defer c.Close(context.WithoutCancel(ctx))
	want := p.cfg.redeliveries
	type pos struct {
		part   int32
		offset int64
	}
	var (
		done        []pos // side effects of this run
		commits     int64
		uncommitted int
	)
	h := func(_ context.Context, rec *kgo.Record) error {
		// The sequential consumer commits between polls, everything
		// handled before: a new commit leaves nothing uncommitted.
		if n := c.Stats().Commits; n != commits {
			commits, uncommitted = n, 0
		}
		if uncommitted == want {
			return crash.ErrCrash // dies before this record's side effect
		}
		if err := p.effect(rec); err != nil {
			return err
		}
		done = append(done, pos{rec.Partition, rec.Offset})
		uncommitted++
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, waitLimit)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(rctx, h) }()
	var caughtUp bool
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case err = <-runErr:
			break wait
		case <-tick.C:
			// Every order committed before the crash: no poll held
			// enough records.
			if ok, _ := p.committedAll(rctx, p.group); ok {
				caughtUp = true
				cancel()
			}
		}
	}
	switch {
	case errors.Is(err, crash.ErrCrash):
	case caughtUp:
		return 0, fmt.Errorf("the consumer committed every order before %d were left uncommitted (no poll held that many): use a smaller --redeliveries or more --records", want)
	case err == nil && ctx.Err() == nil:
		return 0, fmt.Errorf("the consumer did not crash within %s", waitLimit)
	case err == nil:
		return 0, ctx.Err()
	default:
		return 0, fmt.Errorf("the consumer before the crash: %w", err)
	}
	// What the next consumer is handed again: the side effects at or past
	// the committed offsets.
	offsets, err := p.adm.FetchOffsets(ctx, p.group)
	if err != nil {
		return 0, fmt.Errorf("reading the offsets committed before the crash: %w", err)
	}
	redelivered := 0
	for _, d := range done {
		o, ok := offsets.Lookup(p.in, d.part)
		if !ok || d.offset >= o.At {
			redelivered++
		}
	}
	if redelivered != want {
		return redelivered, fmt.Errorf("the crash left %d records handled and not committed, want %d", redelivered, want)
	}
	return redelivered, nil
}

// waitCaughtUp waits until both groups committed every order, the
// consumer's lag is 0 on every partition, and the eos handler failures of
// the round are counted.
func (p *pipeline) waitCaughtUp(ctx context.Context, c *consumer.Consumer, startAborts int64) error {
	wctx, cancel := context.WithTimeout(ctx, waitLimit)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("the pipeline did not catch up within %s: consumer %+v, eos %+v", waitLimit, c.Stats(), p.session.Stats())
		case <-p.curRun.done:
			return fmt.Errorf("the consumer stopped: %v", p.curRun.err)
		case <-p.sessionRun.done:
			return fmt.Errorf("the eos session stopped: %v", p.sessionRun.err)
		case <-tick.C:
		}
		lag := c.Stats().Lag[p.in]
		zero := len(lag) == partitions
		for _, l := range lag {
			zero = zero && l == 0
		}
		if !zero || p.session.Stats().AbortedHandler-startAborts < int64(p.cfg.handlerFailures) {
			continue
		}
		guarded, err := p.committedAll(wctx, p.group)
		if err != nil || !guarded {
			continue
		}
		if copied, err := p.committedAll(wctx, p.copierGroup); err == nil && copied {
			return nil
		}
	}
}

// committedAll says whether group committed the end of every partition of
// the orders.
func (p *pipeline) committedAll(ctx context.Context, group string) (bool, error) {
	ends, err := p.adm.ListEndOffsets(ctx, p.in)
	if err != nil {
		return false, err
	}
	if err := ends.Error(); err != nil {
		return false, err
	}
	offsets, err := p.adm.FetchOffsets(ctx, group)
	if err != nil {
		return false, err
	}
	all := true
	ends.Each(func(e kadm.ListedOffset) {
		o, ok := offsets.Lookup(e.Topic, e.Partition)
		if !ok || o.Err != nil || o.At < e.Offset {
			all = false
		}
	})
	return all, nil
}

// stopCurrent stops the consumer left running by the last round: it
// commits what it handled and leaves the group.
func (p *pipeline) stopCurrent(ctx context.Context) error {
	if p.cur == nil {
		return nil
	}
	err := errors.Join(p.curRun.stop(), p.cur.Close(context.WithoutCancel(ctx)))
	p.cur, p.curRun = nil, nil
	return err
}

// close stops and closes everything the pipeline started.
func (p *pipeline) close(ctx context.Context) error {
	err := p.stopCurrent(ctx)
	if p.session != nil {
		if p.sessionRun != nil {
			err = errors.Join(err, p.sessionRun.stop())
		}
		err = errors.Join(err, p.session.Close(ctx))
	}
	if p.prod != nil {
		err = errors.Join(err, p.prod.Close(ctx))
	}
	if p.admCl != nil {
		p.admCl.Close()
	}
	if p.cluster != nil {
		p.cluster.Close()
	}
	return err
}
