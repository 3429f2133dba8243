package main

import (
	"strings"
	"testing"
	"time"
)

// TestTable checks the table's figures on made-up turns, without Kafka: the
// bench itself is not run in CI (too long), this keeps its build and
// arithmetic checked.
func TestTable(t *testing.T) {
	sec := section{name: "producer", records: 100_000, sides: []side{
		{name: "raw"},
		{name: "other", base: "raw", note: "a note"},
	}}
	res := [][]result{
		{{records: 100_000, wall: time.Second, cpu: time.Second, machine: 2 * time.Second}, {records: 100_000, wall: time.Second, cpu: time.Second, machine: 2 * time.Second}},
		{{records: 100_000, wall: 2 * time.Second, cpu: 500 * time.Millisecond, commits: 4, machine: time.Second}, {records: 100_000, wall: time.Second, cpu: time.Second, commits: 2, machine: 3 * time.Second}},
	}
	hasAll(t, printed(sec, res),
		"| raw | 100000 (100000–100000) | 102.4 (102.4–102.4) | 1.000 (1.000–1.000) | 1 (base) | 1 (base) | — |",
		"| other | 75000 (50000–100000) | 76.8 (51.2–102.4) | 0.750 (0.500–1.000) | 0.75 (0.50–1.00) | 0.75 (0.50–1.00) | raw |",
		"- other: a note",
		"- machine CPU-s per 100k records (this process, the broker and the rest), per round: raw 2.000 (2.000–2.000); other 2.000 (1.000–3.000)\n",
		"- records per commit, per round: other 37500 (25000–50000)\n", // raw's turns counted none
	)
}

// printed is the table printTable prints.
func printed(sec section, res [][]result) string {
	var b strings.Builder
	printTable(&b, sec, res)
	return b.String()
}

// hasAll fails t for each of wants that table does not contain.
func hasAll(t *testing.T, table string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
}

func TestPayloadValues(t *testing.T) {
	p := newPayload()
	if a, b := p.value(0), p.value(1); len(a) != recordSize || string(a) == string(b) {
		t.Fatalf("values 0 and 1: %d bytes, equal %v", len(a), string(a) == string(b))
	}
	if v := p.value(payloadSize/recordSize - 1); len(v) != recordSize {
		t.Fatalf("last value: %d bytes", len(v))
	}
}

func TestMedianCI(t *testing.T) {
	seq := func(n int) []float64 {
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = float64(n - i) // unsorted: medianCI sorts a copy
		}
		return xs
	}
	for _, c := range []struct {
		n      int
		lo, hi float64 // 0, 0: no interval
	}{
		{5, 0, 0},    // P(B = 0) = 1/32 > 2.5 %
		{6, 1, 6},    // 1/64 ≤ 2.5 % < 7/64
		{10, 2, 9},   // P(B ≤ 1) = 11/1024
		{50, 18, 33}, // P(B ≤ 17) = 1.6 %, P(B ≤ 18) = 3.2 %
	} {
		xs := seq(c.n)
		lo, hi, ok := medianCI(xs)
		if ok != (c.hi != 0) || lo != c.lo || hi != c.hi {
			t.Errorf("n=%d: medianCI = %v, %v, %v; want %v, %v", c.n, lo, hi, ok, c.lo, c.hi)
		}
		if xs[0] != float64(c.n) {
			t.Errorf("n=%d: medianCI sorted its input", c.n)
		}
	}
}

func TestCPUStat(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	st0 := parseCPUStat("cpu  100 10 50 1000 20 5 5 0 7 0")
	st1 := parseCPUStat("cpu  250 10 150 1300 40 5 15 10 9 0")
	if !st0.ok || !st1.ok {
		t.Fatal("lines not parsed")
	}
	// busy: user, nice, system, irq, softirq and steal (150+0+100+0+10+10
	// ticks), not idle or iowait, and guest is in user already.
	if got := st0.busyCPU(st1); got != 2700*time.Millisecond {
		t.Errorf("busyCPU = %v, want 2.7s", got)
	}
	// sys 100 of 150+0+100+300+20+0+10+10 = 590 ticks
	if got := st0.sysShare(st1); got != 100.0/590 {
		t.Errorf("sysShare = %v, want %v", got, 100.0/590)
	}
	if got := st1.busyCPU(st0); got != -1 {
		t.Errorf("busyCPU backwards = %v, want -1", got)
	}
	if st := parseCPUStat("intr 1 2 3"); st.ok {
		t.Error("a line that is not cpu parsed")
	}
}

// TestTableCI checks the confidence-interval lines, printed from 6 rounds on,
// for a base and for an also comparison.
func TestTableCI(t *testing.T) {
	sec := section{name: "copy", records: 100_000, sides: []side{
		{name: "raw"},
		{name: "other", base: "raw", also: []string{"loop"}},
		{name: "loop", base: "raw"},
	}}
	turn := func(wall, machine time.Duration) result {
		return result{records: 100_000, wall: wall, cpu: time.Second, machine: machine}
	}
	res := make([][]result, 3)
	for range 6 {
		res[0] = append(res[0], turn(time.Second, 2*time.Second))
		res[1] = append(res[1], turn(2*time.Second, time.Second))
		res[2] = append(res[2], turn(time.Second, 0)) // no machine CPU: left out of its ratios
	}
	hasAll(t, printed(sec, res),
		"95 % confidence intervals of the median ratios (distribution-free, 6 paired rounds):\n",
		"- other × loop: throughput 0.50–0.50, CPU/record 1.00–1.00\n",
		"- other × raw: throughput 0.50–0.50, CPU/record 1.00–1.00, machine CPU/record 0.50–0.50\n",
		"- loop × raw: throughput 1.00–1.00, CPU/record 1.00–1.00\n",
	)
}
