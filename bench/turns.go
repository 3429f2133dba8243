package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kdeliver/kdeliver/integration"
)

// env is what every turn gets.
type env struct {
	cfg     config
	c       *integration.Cluster
	brokers []string
	payload *payload
	javaCP  string // classpath of Kafka's tools; "" without -java
	seq     int    // names topics, groups and transactional IDs uniquely
	topic   string // the topic of the turn running
	// javaBase is the CPU of each Java tool on a tiny input, by class.
	javaBase map[string]time.Duration
}

// name returns a new unique name with prefix.
func (e *env) name(prefix string) string {
	e.seq++
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), e.seq)
}

// payload is random bytes that record values are cut from: each 1 KiB value
// is incompressible, and no two values in a batch are the same.
type payload struct{ b []byte }

const payloadSize = 16 << 20

func newPayload() *payload {
	b := make([]byte, payloadSize+recordSize)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return &payload{b: b}
}

// value returns the value of record i.
func (p *payload) value(i int) []byte {
	off := (i * recordSize) % payloadSize
	return p.b[off : off+recordSize : off+recordSize]
}

// result is one turn's measure.
type result struct {
	records int
	wall    time.Duration // from the first record to the last acknowledged / handled (and committed)
	cpu     time.Duration // the client's user + system CPU over the turn
	// machine is the whole machine's busy CPU over the turn (the client's,
	// the broker's and the rest's), -1 when /proc/stat cannot be read;
	// 0 in made-up results.
	machine time.Duration
	// commits counts the copy's commits over the turn (transactions, or
	// the at-least-once loop's offset commits); 0 where not counted.
	commits int
}

// side is one client in a section.
type side struct {
	name string
	// base names the side its ratios are to (raw kgo with the same
	// semantics); "" for a side that is its own base.
	base string
	// also names more sides to compare with, printed under the table
	// (kdeliver eos against the at-least-once copy loops).
	also []string
	// note is printed under the table (e.g. "no idempotence").
	note string
	// run does one turn of n records.
	run func(ctx context.Context, e *env, n int) (result, error)
}

type section struct {
	name    string
	records int
	sides   []side
	// after runs after every turn (deletes the turn's topic).
	cleanup func(ctx context.Context)
}

// cpuNow is this process's user and system CPU time so far.
func cpuNow() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru) // cannot fail for RUSAGE_SELF
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// meter measures a Go turn: start at the first record, stop at the end.
type meter struct {
	t0   time.Time
	cpu0 time.Duration
}

func startMeter() meter { return meter{t0: time.Now(), cpu0: cpuNow()} }

func (m meter) stop(n int) result {
	return result{records: n, wall: time.Since(m.t0), cpu: cpuNow() - m.cpu0}
}

// stopCommits is stop for a copy turn that committed commits times.
func (m meter) stopCommits(n, commits int) result {
	r := m.stop(n)
	r.commits = commits
	return r
}

// runSection runs a warm-up turn of every side (a tenth of the records),
// then cfg.rounds rounds of one turn per side, in order.
func runSection(ctx context.Context, e *env, sec section) ([][]result, error) {
	sides := sec.sides
	res := make([][]result, len(sides))
	turn := func(round string, k, n int) (result, error) {
		s := sides[k]
		runtime.GC() // the previous turn's garbage is not this turn's cost
		tctx, cancel := context.WithTimeout(ctx, e.cfg.turnLimit)
		var r result
		var err error
		// -cpuprofile: go tool pprof -tagfocus side=NAME shows one client.
		st0 := readCPUStat()
		pprof.Do(tctx, pprof.Labels("side", s.name, "section", sec.name), func(ctx context.Context) {
			r, err = s.run(ctx, e, n)
		})
		// The machine's system CPU share: this VM's broker runs at two
		// speeds, the slow one with 40 % or more in the kernel
		// (BENCHMARKS.md, runs X1–X7).
		st1 := readCPUStat()
		sysShare := st0.sysShare(st1)
		r.machine = st0.busyCPU(st1)
		cancel()
		if sec.cleanup != nil {
			sec.cleanup(ctx)
		}
		if err != nil {
			return r, fmt.Errorf("%s, %s, round %s: %w", sec.name, s.name, round, err)
		}
		if r.records < n {
			return r, fmt.Errorf("%s, %s, round %s: measured %d records, want %d", sec.name, s.name, round, r.records, n)
		}
		commits := ""
		if r.commits > 0 {
			commits = fmt.Sprintf(", %d commits", r.commits)
		}
		sys := ""
		if sysShare >= 0 {
			sys = fmt.Sprintf(", sys %.0f%%", 100*sysShare)
		}
		machine := ""
		if r.machine > 0 {
			machine = fmt.Sprintf(", machine %.3f CPU-s/100k", machinePer100k(r))
		}
		fmt.Fprintf(os.Stderr, "%s round %s %-28s %9.0f rec/s %7.1f MB/s %6.3f CPU-s/100k  (%.1fs%s%s%s, load %s)\n",
			sec.name, round, s.name, rate(r), mbps(r), cpuPer100k(r), r.wall.Seconds(), commits, sys, machine, loadAvg())
		return r, nil
	}
	warm := max(sec.records/10, 1000)
	for k := range sides {
		if _, err := turn("warm-up", k, warm); err != nil {
			return nil, err
		}
	}
	for i := range e.cfg.rounds {
		for k := range sides {
			r, err := turn(strconv.Itoa(i+1), k, sec.records)
			if err != nil {
				return nil, err
			}
			res[k] = append(res[k], r)
		}
	}
	return res, nil
}

func rate(r result) float64 { return float64(r.records) / r.wall.Seconds() }
func mbps(r result) float64 { return float64(r.records) * recordSize / 1e6 / r.wall.Seconds() }
func cpuPer100k(r result) float64 {
	return r.cpu.Seconds() / float64(r.records) * 100_000
}

// machinePer100k is the whole machine's CPU seconds per 100k records.
func machinePer100k(r result) float64 {
	return r.machine.Seconds() / float64(r.records) * 100_000
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + m) / 2
	}
	return m
}

// spread formats the median of xs and its min–max.
func spread(xs []float64, prec int) string {
	if len(xs) == 1 {
		return strconv.FormatFloat(xs[0], 'f', prec, 64)
	}
	return fmt.Sprintf("%s (%s–%s)", strconv.FormatFloat(median(xs), 'f', prec, 64),
		strconv.FormatFloat(slices.Min(xs), 'f', prec, 64), strconv.FormatFloat(slices.Max(xs), 'f', prec, 64))
}

// medianCI returns the distribution-free 95 % confidence interval of the
// median of xs: the order statistics k and n-k+1, k the largest with
// P(Binomial(n, ½) < k) ≤ 2.5 %. ok is false below 6 values, where no such
// k exists. Per-round ratios on a noisy machine are read against it, not
// against their min–max (BENCHMARKS.md, runs Z6–Z9).
func medianCI(xs []float64) (lo, hi float64, ok bool) {
	n := len(xs)
	k, cdf, pmf := 0, 0.0, math.Pow(0.5, float64(n)) // P(B < k), P(B = k)
	for cdf+pmf <= 0.025 {
		cdf += pmf
		k++
		pmf *= float64(n-k+1) / float64(k)
	}
	if k == 0 {
		return 0, 0, false
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[k-1], s[n-k], true
}

// ci formats the 95 % confidence interval of xs's median, or "" (see
// medianCI).
func ci(name string, xs []float64) string {
	lo, hi, ok := medianCI(xs)
	if !ok {
		return ""
	}
	return fmt.Sprintf("%s %.2f–%.2f", name, lo, hi)
}

// ratios are the per-round ratios of a side's turns to another's:
// throughput, the client's CPU a record and the machine's CPU a record (nil
// unless every round of both has it).
func ratios(r, to []result) (tr, cr, mr []float64) {
	for i, x := range r {
		tr = append(tr, rate(x)/rate(to[i]))
		cr = append(cr, cpuPer100k(x)/cpuPer100k(to[i]))
		if x.machine > 0 && to[i].machine > 0 {
			mr = append(mr, machinePer100k(x)/machinePer100k(to[i]))
		}
	}
	if len(mr) != len(tr) {
		mr = nil
	}
	return tr, cr, mr
}

// ciLine formats the confidence intervals of the ratios of name to base,
// or "" below 6 rounds (see medianCI).
func ciLine(name, base string, tr, cr, mr []float64) string {
	c := ci("throughput", tr)
	if c == "" {
		return ""
	}
	c = fmt.Sprintf("- %s × %s: %s, %s", name, base, c, ci("CPU/record", cr))
	if mr != nil {
		c += ", " + ci("machine CPU/record", mr)
	}
	return c
}

func printTable(w io.Writer, sec section, res [][]result) {
	idx := map[string]int{}
	for k, s := range sec.sides {
		idx[s.name] = k
	}
	fmt.Fprintf(w, "\n%s: %d records of %d B, %d partitions, %d rounds; median (min–max over rounds); ratios are per round to the base in the same round\n\n",
		sec.name, sec.records, recordSize, partitions, len(res[0]))
	fmt.Fprintln(w, "| client | records/s | MB/s | CPU s / 100k records | throughput × base | CPU/record × base | base |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	var notes, also, perCommit, cis, machine []string
	for k, s := range sec.sides {
		for _, name := range s.also {
			a, ok := idx[name]
			if !ok {
				continue
			}
			tr, cr, mr := ratios(res[k], res[a])
			mcol := ""
			if mr != nil {
				mcol = ", machine CPU/record " + spread(mr, 2)
			}
			also = append(also, fmt.Sprintf("- %s × %s, per round: throughput %s, CPU/record %s%s", s.name, name, spread(tr, 2), spread(cr, 2), mcol))
			if c := ciLine(s.name, name, tr, cr, mr); c != "" {
				cis = append(cis, c)
			}
		}
		var rs, ms, cs, mc []float64
		for _, r := range res[k] {
			rs = append(rs, rate(r))
			ms = append(ms, mbps(r))
			cs = append(cs, cpuPer100k(r))
			if r.machine > 0 {
				mc = append(mc, machinePer100k(r))
			}
		}
		trs, crs, base := "1 (base)", "1 (base)", "—"
		if b, ok := idx[s.base]; ok {
			tr, cr, mr := ratios(res[k], res[b])
			trs, crs, base = spread(tr, 2), spread(cr, 2), s.base
			if c := ciLine(s.name, s.base, tr, cr, mr); c != "" {
				cis = append(cis, c)
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", s.name, spread(rs, 0), spread(ms, 1), spread(cs, 3), trs, crs, base)
		if s.note != "" {
			notes = append(notes, fmt.Sprintf("- %s: %s", s.name, s.note))
		}
		if len(mc) == len(res[k]) {
			machine = append(machine, fmt.Sprintf("%s %s", s.name, spread(mc, 3)))
		}
		var per []float64
		for _, r := range res[k] {
			if r.commits > 0 {
				per = append(per, float64(r.records)/float64(r.commits))
			}
		}
		if len(per) == len(res[k]) {
			perCommit = append(perCommit, fmt.Sprintf("%s %s", s.name, spread(per, 0)))
		}
	}
	if len(also) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, strings.Join(also, "\n"))
	}
	if len(cis) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "95 %% confidence intervals of the median ratios (distribution-free, %d paired rounds):\n", len(res[0]))
		fmt.Fprintln(w, strings.Join(cis, "\n"))
	}
	if len(machine) > 0 {
		// The broker shares the machine: a client that costs it more CPU
		// a record leaves the other less.
		fmt.Fprintln(w)
		fmt.Fprintf(w, "- machine CPU-s per 100k records (this process, the broker and the rest), per round: %s\n", strings.Join(machine, "; "))
	}
	if len(perCommit) > 0 {
		// What each commit held, to compare the loops' cycles (see
		// BENCHMARKS.md, runs R–W).
		fmt.Fprintln(w)
		fmt.Fprintf(w, "- records per commit, per round: %s\n", strings.Join(perCommit, "; "))
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, strings.Join(notes, "\n"))
	}
}

// keep filters sides by -only, keeping every side that is a base (or the
// second comparison, also) of a side kept.
func keep(e *env, sides []side) []side {
	if len(e.cfg.only) == 0 {
		return sides
	}
	bases := map[string]bool{}
	for _, s := range sides {
		if slices.Contains(e.cfg.only, s.name) {
			for _, b := range append([]string{s.base}, s.also...) {
				if b != "" {
					bases[b] = true
				}
			}
		}
	}
	return slices.DeleteFunc(slices.Clone(sides), func(s side) bool {
		return !slices.Contains(e.cfg.only, s.name) && !bases[s.name]
	})
}
