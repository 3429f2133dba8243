package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

//go:embed java/pom.xml
var toolsPom []byte

// javaHeap is the heap Kafka's perf scripts give the tools
// (kafka-producer-perf-test.sh: KAFKA_HEAP_OPTS=-Xmx512M).
const javaHeap = "-Xmx512M"

// javaClasspath returns the classpath of Kafka's tools, fetching the jars
// with Maven into $KDELIVER_CACHE (default ~/.cache/kdeliver)/
// kafka-tools-<version>/libs the first time (or when java/pom.xml changed),
// as .ci/kafka/fetch does for the broker.
func javaClasspath(ctx context.Context) (string, error) {
	if _, err := exec.LookPath("java"); err != nil {
		return "", errors.New("java is not installed (Kafka's tools need Java 17+)")
	}
	cache := os.Getenv("KDELIVER_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no cache folder: set KDELIVER_CACHE: %w", err)
		}
		cache = filepath.Join(home, ".cache", "kdeliver")
	}
	version := regexp.MustCompile(`<kafka.version>([^<]+)</kafka.version>`).FindSubmatch(toolsPom)
	if version == nil {
		return "", errors.New("java/pom.xml has no <kafka.version>")
	}
	dir := filepath.Join(cache, "kafka-tools-"+string(version[1]))
	sum := sha256.Sum256(toolsPom)
	stamp := hex.EncodeToString(sum[:])
	cp := filepath.Join(dir, "libs", "*")
	if b, err := os.ReadFile(filepath.Join(dir, ".pom.sha256")); err == nil && strings.TrimSpace(string(b)) == stamp {
		return cp, nil
	}
	if _, err := exec.LookPath("mvn"); err != nil {
		return "", fmt.Errorf("mvn (Maven) is needed once to fetch Kafka's tools into %s", dir)
	}
	fmt.Fprintf(os.Stderr, "bench: fetching Kafka's tools %s with Maven into %s\n", version[1], dir)
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	pom := filepath.Join(tmp, "pom.xml")
	if err := os.WriteFile(pom, toolsPom, 0o644); err != nil {
		return "", err
	}
	fctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(fctx, "mvn", "-q", "-B", "-Dstyle.color=never", "-f", pom, "dependency:copy-dependencies",
		"-DincludeScope=runtime", "-DoutputDirectory="+filepath.Join(tmp, "libs"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("mvn dependency:copy-dependencies for %s: %w", pom, err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".pom.sha256"), []byte(stamp+"\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	return cp, nil
}

// javaRun runs one of Kafka's tools (class in org.apache.kafka.tools) and
// returns its standard output, its wall time and its CPU (user + system,
// from its rusage).
func javaRun(ctx context.Context, e *env, class string, args ...string) (string, time.Duration, time.Duration, error) {
	cmd := exec.CommandContext(ctx, "java", append([]string{javaHeap, "-cp", e.javaCP, "org.apache.kafka.tools." + class}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	if err != nil {
		return "", 0, 0, fmt.Errorf("%s %s: %w\n%s%s", class, strings.Join(args, " "), err, tail(out.String()), tail(errb.String()))
	}
	if os.Getenv("BENCH_JAVA_OUTPUT") != "" {
		fmt.Fprintf(os.Stderr, "--- %s output:\n%s%s", class, out.String(), errb.String())
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return "", 0, 0, errors.New("no rusage for the Java process on this OS")
	}
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return out.String(), wall, cpu, nil
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// javaBaseline returns (once per key) the CPU of a run of the tool on a
// tiny input: the JVM's start, class loading and connection, which the
// turn's CPU is charged without.
func javaBaseline(ctx context.Context, e *env, key string, run func() (time.Duration, error)) (time.Duration, error) {
	if e.javaBase == nil {
		e.javaBase = map[string]time.Duration{}
	}
	if d, ok := e.javaBase[key]; ok {
		return d, nil
	}
	d, err := run()
	if err != nil {
		return 0, fmt.Errorf("baseline run: %w", err)
	}
	fmt.Fprintf(os.Stderr, "bench: %s on a tiny input used %.2f CPU-s (subtracted from its turns)\n", key, d.Seconds())
	e.javaBase[key] = d
	return d, nil
}

// producerPerfRate matches ProducerPerformance's summary line:
// "1000000 records sent, 123456.7 records/sec (120.56 MB/sec), ...".
var producerPerfRate = regexp.MustCompile(`(\d+) records sent, ([\d.]+) records/sec`)

func javaProducerArgs(e *env, topic string, n int) []string {
	return []string{"--topic", topic, "--num-records", strconv.Itoa(n), "--record-size", strconv.Itoa(recordSize),
		"--throughput", "-1", "--producer-props",
		"bootstrap.servers=" + strings.Join(e.brokers, ","),
		"acks=all", "enable.idempotence=true",
		"max.in.flight.requests.per.connection=" + strconv.Itoa(inFlight),
		"linger.ms=" + strconv.Itoa(int(linger/time.Millisecond)),
		"batch.size=" + strconv.Itoa(batchBytes),
		"compression.type=none",
		"delivery.timeout.ms=" + strconv.Itoa(int(deliveryLimit/time.Millisecond)),
	}
}

func javaProduce(ctx context.Context, e *env, n int) (result, error) {
	topic := e.topic
	base, err := javaBaseline(ctx, e, "ProducerPerformance", func() (time.Duration, error) {
		_, _, cpu, err := javaRun(ctx, e, "ProducerPerformance", javaProducerArgs(e, topic, 1)...)
		return cpu, err
	})
	if err != nil {
		return result{}, err
	}
	out, _, cpu, err := javaRun(ctx, e, "ProducerPerformance", javaProducerArgs(e, topic, n)...)
	if err != nil {
		return result{}, err
	}
	m := producerPerfRate.FindAllStringSubmatch(out, -1)
	if m == nil {
		return result{}, fmt.Errorf("no summary line in ProducerPerformance's output:\n%s", tail(out))
	}
	last := m[len(m)-1]
	sent, _ := strconv.Atoi(last[1])
	r, _ := strconv.ParseFloat(last[2], 64)
	if sent != n || r <= 0 {
		return result{}, fmt.Errorf("ProducerPerformance sent %d records at %v/s, want %d:\n%s", sent, r, n, tail(out))
	}
	return result{records: n, wall: time.Duration(float64(n) / r * float64(time.Second)), cpu: max(cpu-base, 0)}, nil
}
