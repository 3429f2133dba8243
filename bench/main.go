// Command bench compares kdeliver with the Kafka clients a user would pick
// instead (raw franz-go, sarama, segmentio/kafka-go, confluent-kafka-go and
// Kafka's own Java tools) on one real Apache Kafka 4.4.0 broker started by
// the integration harness, with matched delivery settings per semantics:
//
//	cd bench && go run . -rounds 3
//
// It runs a producer section (1 KiB random records to a 6-partition topic),
// a consumer section (a seeded topic read by a new group with a no-op
// handler, committing per the semantics) and an exactly-once copy section
// (read-process-write in 100 ms transactions). In each section every client
// runs once per round, in the same order (A B C … A B C …), after one
// unmeasured warm-up turn each; a progress line per turn goes to stderr and
// the table to stdout. The settings of each client are in BENCHMARKS.md
// ("Side by side with other clients").
//
// Client CPU is the process's getrusage (RUSAGE_SELF) delta over a turn for
// the Go clients, which run in this process one at a time (the broker is a
// child process, not counted), and the child's rusage for the Java tools,
// minus the CPU of the same tool on a tiny input (JVM start, connection).
//
// The broker: KDELIVER_KAFKA_HOME (default: the newest
// ~/.cache/kdeliver/kafka-*, made by .ci/kafka/fetch) with the process
// backend unless KDELIVER_KAFKA_BACKEND says otherwise; Java's tools are
// fetched once with Maven into ~/.cache/kdeliver/kafka-tools-4.4.0.
// BENCH_JAVA_OUTPUT=1 copies each Java tool's output to stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kdeliver/kdeliver/integration"
)

// partitions of every topic the bench writes or reads.
const partitions = 6

// recordSize is the value size of every record, in bytes.
const recordSize = 1024

type config struct {
	rounds         int
	produceRecords int
	consumeRecords int
	copyRecords    int
	sections       []string
	only           []string // client names; empty: all
	java           bool
	turnLimit      time.Duration
	cpuProfile     string
}

func main() {
	var cfg config
	var sections, only string
	flag.IntVar(&cfg.rounds, "rounds", 3, "measured rounds (each client once per round)")
	flag.IntVar(&cfg.produceRecords, "produce-records", 2_000_000, "records each producer turn writes")
	flag.IntVar(&cfg.consumeRecords, "consume-records", 1_000_000, "records each consumer turn reads")
	flag.IntVar(&cfg.copyRecords, "copy-records", 1_000_000, "records each exactly-once copy turn copies")
	flag.StringVar(&sections, "sections", "produce,consume,copy", "sections to run, comma separated")
	flag.StringVar(&only, "only", "", "run only these clients (comma separated names from the table; raw kgo is always kept)")
	flag.BoolVar(&cfg.java, "java", true, "include Kafka's Java tools (needs java and mvn)")
	flag.DurationVar(&cfg.turnLimit, "turn-limit", 5*time.Minute, "bound on each turn")
	flag.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file; each turn is labelled side=<client> and section=<section>")
	flag.Parse()
	cfg.sections = split(sections)
	cfg.only = split(only)
	if cfg.rounds < 1 || cfg.produceRecords < 1 || cfg.consumeRecords < 1 || cfg.copyRecords < 1 {
		log.Fatalf("bench: -rounds and the record counts must be at least 1")
	}
	for _, s := range cfg.sections {
		if !slices.Contains([]string{"produce", "consume", "copy"}, s) {
			log.Fatalf("bench: unknown section %q in -sections: use produce, consume and copy", s)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		log.Fatalf("bench: %v", err)
	}
}

func split(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func run(ctx context.Context, cfg config) error {
	opts := []integration.Option{integration.WithNodes(1), integration.WithLogf(func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "harness: "+format+"\n", args...)
	})}
	if os.Getenv(integration.EnvBackend) == "" {
		opts = append(opts, integration.WithBackend(integration.BackendProcess))
	}
	c, err := integration.New(ctx, opts...)
	if err != nil {
		return fmt.Errorf("start Kafka: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Close(cctx); err != nil {
			fmt.Fprintf(os.Stderr, "bench: stop Kafka: %v\n", err)
		}
	}()
	if c.Kind() == integration.BackendKfake {
		return errors.New("only kfake is available: set KDELIVER_KAFKA_HOME to Kafka's jars (.ci/kafka/fetch prints the folder)")
	}
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	env := &env{cfg: cfg, c: c, brokers: c.Brokers(), payload: newPayload()}
	if cfg.java {
		if env.javaCP, err = javaClasspath(ctx); err != nil {
			return fmt.Errorf("the Java tools (run with -java=false to leave them out): %w", err)
		}
	}
	fmt.Printf("Kafka %s, %s backend, %s; %s/%s, %d CPUs, %s\n", c.Version(), c.Kind(), strings.Join(env.brokers, ","),
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	fmt.Printf("load at start: %s\n", loadAvg())
	if !confluentBuilt {
		fmt.Println("confluent-kafka-go left out: built without cgo (it needs a C compiler for librdkafka)")
	}
	for _, s := range cfg.sections {
		var sec section
		switch s {
		case "produce":
			sec = produceSection(env)
		case "consume":
			if sec, err = consumeSection(ctx, env); err != nil {
				return err
			}
		case "copy":
			if sec, err = copySection(ctx, env); err != nil {
				return err
			}
		}
		res, err := runSection(ctx, env, sec)
		if err != nil {
			return err
		}
		printTable(os.Stdout, sec, res)
		fmt.Printf("load after %s: %s\n\n", sec.name, loadAvg())
	}
	return nil
}

// loadAvg is the machine's load average, from /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return strings.TrimSpace(string(b))
	}
	return strings.Join(f[:3], " ")
}

// cpuStat is the machine's CPU time so far, from /proc/stat's first line
// (clock ticks); ok is false where it cannot be read.
type cpuStat struct {
	sys, busy, total uint64 // clock ticks (USER_HZ, 100 a second)
	ok               bool
}

func readCPUStat() cpuStat {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuStat{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return parseCPUStat(line)
}

// parseCPUStat parses /proc/stat's first line, the machine's "cpu" totals.
func parseCPUStat(line string) cpuStat {
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return cpuStat{}
	}
	var st cpuStat
	for i, v := range f[1:] {
		if i >= 8 { // guest time is already counted in user
			break
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return cpuStat{}
		}
		st.total += n
		switch i { // user nice system idle iowait irq softirq steal
		case 2:
			st.sys = n
		case 3, 4:
			continue // idle, not busy
		}
		st.busy += n
	}
	st.ok = true
	return st
}

// busyCPU is the CPU the whole machine was busy for between st and a later
// reading (every process: the client, the broker, the rest), -1 if either
// is unknown.
func (st cpuStat) busyCPU(later cpuStat) time.Duration {
	if !st.ok || !later.ok || later.busy < st.busy {
		return -1
	}
	return time.Duration(later.busy-st.busy) * (time.Second / 100)
}

// sysShare is the system CPU share between st and a later reading, -1 if
// either is unknown.
func (st cpuStat) sysShare(later cpuStat) float64 {
	if !st.ok || !later.ok || later.total <= st.total {
		return -1
	}
	return float64(later.sys-st.sys) / float64(later.total-st.total)
}
