package kdeliver_test

import (
	"encoding/json"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/kdeliver/kdeliver"
)

func TestParseSemanticsSpellings(t *testing.T) {
	cases := map[kdeliver.Semantics][]string{
		kdeliver.AtMostOnce: {"at-most-once", "at_most_once", "atmostonce", "AtMostOnce", "AT-MOST-ONCE",
			"at most once", "amo", "AMO", "  at-most-once  ", "at.most.once"},
		kdeliver.AtLeastOnce: {"at-least-once", "at_least_once", "atleastonce", "AtLeastOnce", "AT_LEAST_ONCE",
			"at least once", "alo", "Alo"},
		kdeliver.ExactlyOnce: {"exactly-once", "exactly_once", "exactlyonce", "ExactlyOnce", "EXACTLY ONCE",
			"eos", "EOS", "eo"},
	}
	for want, spellings := range cases {
		for _, text := range spellings {
			got, err := kdeliver.ParseSemantics(text)
			if err != nil || got != want {
				t.Errorf("ParseSemantics(%q) = %v, %v; want %v, nil", text, got, err, want)
			}
		}
	}
}

func TestParseSemanticsUnknown(t *testing.T) {
	for _, text := range []string{"", "once", "at-least-twice", "exactly", "0", "al o x"} {
		s, err := kdeliver.ParseSemantics(text)
		if err == nil {
			t.Fatalf("ParseSemantics(%q) = %v, nil; want an error", text, s)
		}
		if s != 0 {
			t.Errorf("ParseSemantics(%q) returned %v with its error; want the zero value", text, s)
		}
		if !errors.Is(err, kdeliver.ErrInvalidConfig) {
			t.Errorf("ParseSemantics(%q) error %v does not wrap ErrInvalidConfig", text, err)
		}
		for _, accepted := range []string{"at-most-once", "at-least-once", "exactly-once"} {
			if !strings.Contains(err.Error(), accepted) {
				t.Errorf("ParseSemantics(%q) error %q does not list %q", text, err, accepted)
			}
		}
	}
}

func TestSemanticsZeroValueInvalid(t *testing.T) {
	var s kdeliver.Semantics
	if s.Valid() {
		t.Fatal("the zero Semantics is valid; it must not be")
	}
	if got := s.String(); got != "Semantics(0)" {
		t.Errorf("zero String() = %q; want Semantics(0)", got)
	}
	if _, err := s.MarshalText(); !errors.Is(err, kdeliver.ErrInvalidConfig) {
		t.Errorf("zero MarshalText error = %v; want ErrInvalidConfig", err)
	}
	if kdeliver.Semantics(4).Valid() {
		t.Error("Semantics(4) is valid")
	}
	defer func() {
		if recover() == nil {
			t.Error("Preset of the zero Semantics did not panic")
		}
	}()
	_ = s.Preset()
}

func TestSemanticsTextRoundTrip(t *testing.T) {
	if len(kdeliver.All) != 3 {
		t.Fatalf("All has %d values; want 3", len(kdeliver.All))
	}
	for _, s := range kdeliver.All {
		text, err := s.MarshalText()
		if err != nil {
			t.Fatalf("%v.MarshalText: %v", s, err)
		}
		if string(text) != s.String() {
			t.Errorf("MarshalText = %q; String = %q", text, s.String())
		}
		var back kdeliver.Semantics
		if err := back.UnmarshalText(text); err != nil || back != s {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", text, back, err, s)
		}
	}
	var s kdeliver.Semantics = kdeliver.AtLeastOnce
	if err := s.UnmarshalText([]byte("bogus")); !errors.Is(err, kdeliver.ErrInvalidConfig) {
		t.Errorf("UnmarshalText(bogus) = %v; want ErrInvalidConfig", err)
	}
	if s != kdeliver.AtLeastOnce {
		t.Errorf("a failed UnmarshalText changed the value to %v", s)
	}
}

func TestSemanticsJSON(t *testing.T) {
	type config struct {
		Semantics kdeliver.Semantics `json:"semantics"`
	}
	out, err := json.Marshal(config{kdeliver.ExactlyOnce})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"semantics":"exactly-once"}` {
		t.Errorf("json.Marshal = %s", out)
	}
	var c config
	if err := json.Unmarshal([]byte(`{"semantics":"ALO"}`), &c); err != nil || c.Semantics != kdeliver.AtLeastOnce {
		t.Errorf("json.Unmarshal = %v, %v; want at-least-once", c.Semantics, err)
	}
	if err := json.Unmarshal([]byte(`{"semantics":"maybe"}`), &c); !errors.Is(err, kdeliver.ErrInvalidConfig) {
		t.Errorf("json.Unmarshal(maybe) = %v; want ErrInvalidConfig", err)
	}
	if _, err := json.Marshal(config{}); !errors.Is(err, kdeliver.ErrInvalidConfig) {
		t.Errorf("json.Marshal of the zero value = %v; want ErrInvalidConfig", err)
	}
}

func TestSemanticsFlagTextVar(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var s kdeliver.Semantics
	fs.TextVar(&s, "semantics", kdeliver.AtLeastOnce, "delivery guarantee")
	if err := fs.Parse(nil); err != nil || s != kdeliver.AtLeastOnce {
		t.Fatalf("default = %v, %v; want at-least-once", s, err)
	}
	if err := fs.Parse([]string{"-semantics", "at_most_once"}); err != nil || s != kdeliver.AtMostOnce {
		t.Fatalf("-semantics at_most_once = %v, %v", s, err)
	}
	if err := fs.Parse([]string{"-semantics", "twice"}); err == nil || !strings.Contains(err.Error(), "exactly-once") {
		t.Fatalf("-semantics twice = %v; want an error listing the accepted values", err)
	}
}

func TestPresets(t *testing.T) {
	amo, alo, eos := kdeliver.AtMostOnce.Preset(), kdeliver.AtLeastOnce.Preset(), kdeliver.ExactlyOnce.Preset()
	checks := []struct {
		name string
		ok   bool
	}{
		{"AtMostOnce acks=0", amo.Producer.Acks == "0"},
		{"AtMostOnce not idempotent", !amo.Producer.Idempotent},
		{"AtMostOnce no retries", amo.Producer.Retries == "none"},
		{"AtMostOnce commits before processing", amo.Consumer.CommitOrder == kdeliver.CommitBeforeProcessing},
		{"AtLeastOnce acks=all", alo.Producer.Acks == "all"},
		{"AtLeastOnce idempotent", alo.Producer.Idempotent},
		{"AtLeastOnce bounded delivery", alo.Producer.DeliveryTimeout == kdeliver.DefaultDeliveryTimeout},
		{"AtLeastOnce commits after processing", alo.Consumer.CommitOrder == kdeliver.CommitAfterProcessing},
		{"ExactlyOnce transactional", eos.Producer.Transactional && eos.Producer.Idempotent && eos.Producer.Acks == "all"},
		{"ExactlyOnce read_committed", eos.Consumer.Isolation == "read_committed"},
		{"ExactlyOnce commits with the sink", eos.Consumer.CommitOrder == kdeliver.CommitWithSink},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("preset: %s does not hold", c.name)
		}
	}
	for _, s := range kdeliver.All {
		p := s.Preset()
		if p.Semantics != s || p.Consumer.AutoCommit {
			t.Errorf("%v preset: Semantics=%v AutoCommit=%v", s, p.Semantics, p.Consumer.AutoCommit)
		}
	}
}

func TestPresetTableRows(t *testing.T) {
	lines := strings.Split(strings.TrimSpace(kdeliver.PresetTable()), "\n")
	if len(lines) != 2+len(kdeliver.All) {
		t.Fatalf("PresetTable has %d lines; want header, rule and %d rows", len(lines), len(kdeliver.All))
	}
	cols := strings.Count(lines[0], "|")
	for i, s := range kdeliver.All {
		row := lines[2+i]
		if !strings.HasPrefix(row, "| "+s.String()+" |") {
			t.Errorf("row %d = %q; want it to start with %s", i, row, s)
		}
		if strings.Count(row, "|") != cols {
			t.Errorf("row %q has a different column count from the header", row)
		}
	}
}

func TestCommitOrderString(t *testing.T) {
	for o, want := range map[kdeliver.CommitOrder]string{
		kdeliver.CommitBeforeProcessing: "before processing",
		kdeliver.CommitAfterProcessing:  "after processing",
		kdeliver.CommitWithSink:         "in the sink's transaction",
		0:                               "CommitOrder(0)",
	} {
		if got := o.String(); got != want {
			t.Errorf("CommitOrder(%d).String() = %q; want %q", o, got, want)
		}
	}
}

func TestConfigError(t *testing.T) {
	one := &kdeliver.ConfigError{What: "producer", Semantics: kdeliver.AtLeastOnce, Problems: []string{"acks=1 loses records: remove it"}}
	if got, want := one.Error(), "kdeliver: invalid at-least-once producer configuration: acks=1 loses records: remove it"; got != want {
		t.Errorf("one problem:\n got %q\nwant %q", got, want)
	}
	two := &kdeliver.ConfigError{What: "consumer", Problems: []string{"a", "b"}}
	if got, want := two.Error(), "kdeliver: invalid consumer configuration:\n  - a\n  - b"; got != want {
		t.Errorf("two problems, no semantics:\n got %q\nwant %q", got, want)
	}
	var err error = two
	if !errors.Is(err, kdeliver.ErrInvalidConfig) {
		t.Error("ConfigError does not wrap ErrInvalidConfig")
	}
	if errors.Is(err, kdeliver.ErrClosed) {
		t.Error("ConfigError matches ErrClosed")
	}
	var ce *kdeliver.ConfigError
	if !errors.As(err, &ce) || len(ce.Problems) != 2 {
		t.Errorf("errors.As did not recover the ConfigError: %v", ce)
	}
}
