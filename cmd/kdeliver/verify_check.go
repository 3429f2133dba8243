package main

import (
	"bytes"
	"fmt"
	"strconv"

	"github.com/kdeliver/kdeliver"
)

// The values kdeliver verify seeds, and finds again in the output:
//
//	kdv1:RUN:SEQ:KEY:KSEQ
//
// RUN names the verify run (lower-case letters and digits), SEQ is the
// record's number in the run (0..N-1), KEY its key ("k0".."k{K-1}", also the
// record's Kafka key: record SEQ has key SEQ mod K) and KSEQ its number
// among the records of its key (SEQ div K). For example "kdv1:m3x0q1:17:k7:1"
// (K = 10). An output value counts if it contains such a mark anywhere (a
// pipeline may wrap the input value, in JSON say); the first one counts.
const markPrefix = "kdv1:"

// mark is what one seeded value says.
type mark struct {
	run  string
	seq  int64
	key  string
	kseq int64
}

func (m mark) String() string {
	return markPrefix + m.run + ":" + strconv.FormatInt(m.seq, 10) + ":" + m.key + ":" + strconv.FormatInt(m.kseq, 10)
}

// seedMark is the mark of record seq of a run with k keys.
func seedMark(run string, seq int64, k int) mark {
	return mark{run: run, seq: seq, key: "k" + strconv.FormatInt(seq%int64(k), 10), kseq: seq / int64(k)}
}

// parseMark finds the first mark in v.
func parseMark(v []byte) (mark, bool) {
	i := bytes.Index(v, []byte(markPrefix))
	if i < 0 {
		return mark{}, false
	}
	v = v[i+len(markPrefix):]
	var fields [4][]byte
	for f := range fields {
		j := 0
		for j < len(v) && (v[j] >= '0' && v[j] <= '9' || v[j] >= 'a' && v[j] <= 'z') {
			j++
		}
		if j == 0 {
			return mark{}, false
		}
		fields[f], v = v[:j], v[j:]
		if f < 3 {
			if len(v) == 0 || v[0] != ':' {
				return mark{}, false
			}
			v = v[1:]
		}
	}
	seq, err1 := strconv.ParseInt(string(fields[1]), 10, 64)
	kseq, err2 := strconv.ParseInt(string(fields[3]), 10, 64)
	if err1 != nil || err2 != nil || seq < 0 || kseq < 0 {
		return mark{}, false
	}
	return mark{run: string(fields[0]), seq: seq, key: string(fields[2]), kseq: kseq}, true
}

// outRecord is one record read from the output topic.
type outRecord struct {
	partition int32
	offset    int64
	value     []byte
}

// maxExamples bounds each list of examples in a result.
const maxExamples = 10

// Counts is what the checker found. Its JSON form is part of `kdeliver
// verify --json`.
type Counts struct {
	// Expected is the number of input records of the run checked.
	Expected int `json:"expected"`
	// ReadCommitted and ReadUncommitted are the output records of the run
	// read with each isolation level.
	ReadCommitted   int `json:"read_committed"`
	ReadUncommitted int `json:"read_uncommitted"`
	// DeliveredOnce is the number of input records found exactly once in
	// the committed output.
	DeliveredOnce int `json:"delivered_once"`
	// Lost is the number of input records missing from the committed
	// output.
	Lost int `json:"lost"`
	// Duplicated is the number of input records found more than once in
	// the committed output; ExtraCopies counts the copies beyond the first.
	Duplicated  int `json:"duplicated"`
	ExtraCopies int `json:"extra_copies"`
	// Reordered is the number of committed output records that are, per
	// output partition and key, the first delivery of their input record
	// yet come after the first delivery of a later record of the same key
	// (a repeat after a crash is a duplicate, not a reorder).
	Reordered int `json:"reordered"`
	// AbortedReads is the number of output records of the run that a
	// read_uncommitted reader sees and a read_committed one does not: the
	// writes of aborted transactions.
	AbortedReads int `json:"aborted_reads"`
	// OtherRuns is the number of output records of other verify runs (an
	// output topic used before), ignored; Unrecognized the output records
	// with no mark, or marks of this run not in the input, ignored.
	OtherRuns    int `json:"other_runs"`
	Unrecognized int `json:"unrecognized"`

	Examples Examples `json:"examples"`
}

// Examples are the first few sequence numbers of each problem, up to
// maxExamples each; Unrecognized gives "partition/offset" of output records.
type Examples struct {
	Lost         []int64  `json:"lost,omitempty"`
	Duplicated   []int64  `json:"duplicated,omitempty"`
	Reordered    []int64  `json:"reordered,omitempty"`
	AbortedReads []int64  `json:"aborted_reads,omitempty"`
	Unrecognized []string `json:"unrecognized,omitempty"`
}

// check compares the output of a run with its input: want are the
// sequence numbers of the input records of run, committed and uncommitted
// the output topic read read_committed and read_uncommitted, each in
// partition order, then offset order.
func check(run string, want []int64, committed, uncommitted []outRecord) Counts {
	c := Counts{Expected: len(want)}
	expected := make(map[int64]bool, len(want))
	for _, s := range want {
		expected[s] = true
	}
	c.Expected = len(expected)
	add := func(list *[]int64, seq int64) {
		if len(*list) < maxExamples {
			*list = append(*list, seq)
		}
	}
	// ours returns the mark of r if it is an input record of this run.
	ours := func(r outRecord, count bool) (mark, bool) {
		m, ok := parseMark(r.value)
		switch {
		case ok && m.run != run:
			if count {
				c.OtherRuns++
			}
			return m, false
		case !ok || !expected[m.seq]:
			if count {
				c.Unrecognized++
				if len(c.Examples.Unrecognized) < maxExamples {
					c.Examples.Unrecognized = append(c.Examples.Unrecognized, fmt.Sprintf("%d/%d", r.partition, r.offset))
				}
			}
			return m, false
		}
		return m, true
	}

	type pk struct {
		partition int32
		key       string
	}
	copies := make(map[int64]int, len(want))
	latest := map[pk]int64{} // highest KSEQ first-delivered so far
	type po struct {
		partition int32
		offset    int64
	}
	seen := make(map[po]bool, len(committed))
	for _, r := range committed {
		m, ok := ours(r, true)
		if !ok {
			continue
		}
		c.ReadCommitted++
		seen[po{r.partition, r.offset}] = true
		copies[m.seq]++
		if copies[m.seq] > 1 {
			c.ExtraCopies++
			if copies[m.seq] == 2 {
				c.Duplicated++
				add(&c.Examples.Duplicated, m.seq)
			}
			continue
		}
		k := pk{r.partition, m.key}
		if last, ok := latest[k]; ok && m.kseq < last {
			c.Reordered++
			add(&c.Examples.Reordered, m.seq)
		} else {
			latest[k] = m.kseq
		}
	}
	for _, r := range uncommitted {
		m, ok := ours(r, false)
		if !ok {
			continue
		}
		c.ReadUncommitted++
		if !seen[po{r.partition, r.offset}] {
			c.AbortedReads++
			add(&c.Examples.AbortedReads, m.seq)
		}
	}
	for _, s := range want {
		if !expected[s] {
			continue // counted already: the input holds it twice
		}
		delete(expected, s)
		switch copies[s] {
		case 0:
			c.Lost++
			add(&c.Examples.Lost, s)
		case 1:
			c.DeliveredOnce++
		}
	}
	return c
}

// verdict says whether c keeps the guarantee expected (exactly-once: none
// lost, none duplicated; at-least-once: none lost; at-most-once: none
// duplicated; with ordered, also none reordered), and if not, why.
func verdict(expect kdeliver.Semantics, c Counts, ordered bool) (pass bool, why []string) {
	if expect != kdeliver.AtMostOnce && c.Lost > 0 {
		why = append(why, fmt.Sprintf("%d lost", c.Lost))
	}
	if expect != kdeliver.AtLeastOnce && c.Duplicated > 0 {
		why = append(why, fmt.Sprintf("%d duplicated", c.Duplicated))
	}
	if ordered && c.Reordered > 0 {
		why = append(why, fmt.Sprintf("%d reordered", c.Reordered))
	}
	return len(why) == 0, why
}
