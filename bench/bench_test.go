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
		{{records: 100_000, wall: time.Second, cpu: time.Second}, {records: 100_000, wall: time.Second, cpu: time.Second}},
		{{records: 100_000, wall: 2 * time.Second, cpu: 500 * time.Millisecond, commits: 4}, {records: 100_000, wall: time.Second, cpu: time.Second, commits: 2}},
	}
	var b strings.Builder
	printTable(&b, sec, res)
	for _, want := range []string{
		"| raw | 100000 (100000–100000) | 102.4 (102.4–102.4) | 1.000 (1.000–1.000) | 1 (base) | 1 (base) | — |",
		"| other | 75000 (50000–100000) | 76.8 (51.2–102.4) | 0.750 (0.500–1.000) | 0.75 (0.50–1.00) | 0.75 (0.50–1.00) | raw |",
		"- other: a note",
		"- records per commit, per round: other 37500 (25000–50000)\n", // raw's turns counted none
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
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
