package dedup_test

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
)

// TestNewGuardRefuses: every problem with the arguments and options is
// listed in one ConfigError; a nil or zero option is one of them, not a
// panic. (A producer or consumer option does not compile here: the root
// package's TestMisuseDoesNotCompile checks the like for producer.New.)
func TestNewGuardRefuses(t *testing.T) {
	mem := dedup.NewMemory(10)
	tests := []struct {
		name      string
		store     dedup.Store
		namespace string
		opts      []dedup.Option
		want      []string // substrings, one per expected problem
	}{
		{"nil store", nil, "ns", nil, []string{"the store is nil"}},
		{"empty namespace", mem, "", nil, []string{"the namespace is empty"}},
		{"nil option", mem, "ns", []dedup.Option{dedup.WithLease(time.Second), nil}, []string{"option 2 of 2 is nil"}},
		{"zero root option", mem, "ns", []dedup.Option{kdeliver.Option{}}, []string{"an empty option"}},
		{"nil logger", mem, "ns", []dedup.Option{kdeliver.WithLogger(nil)}, []string{"kdeliver.WithLogger(nil)"}},
		{"lease not positive", mem, "ns", []dedup.Option{dedup.WithLease(0)}, []string{"the lease must be positive"}},
		{"TTL within the lease", mem, "ns", []dedup.Option{dedup.WithLease(time.Hour), dedup.WithTTL(time.Minute)}, []string{"must exceed the lease"}},
		{"nil key function", mem, "ns", []dedup.Option{dedup.WithKey(nil)}, []string{"the key function is nil"}},
		{"everything at once", nil, "", []dedup.Option{nil, dedup.WithTTL(time.Second), dedup.WithKey(nil)},
			[]string{"option 1 of 3 is nil", "the store is nil", "the namespace is empty", "must exceed the lease", "the key function is nil"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := dedup.NewGuard(tt.store, tt.namespace, tt.opts...)
			if err == nil {
				t.Fatalf("NewGuard = %v, want an error", g)
			}
			var ce *kdeliver.ConfigError
			if !errors.Is(err, kdeliver.ErrInvalidConfig) || !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *ConfigError wrapping ErrInvalidConfig", err)
			}
			if len(ce.Problems) != len(tt.want) {
				t.Errorf("%d problems, want %d:\n%v", len(ce.Problems), len(tt.want), err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestNewGuardAccepts(t *testing.T) {
	g, err := dedup.NewGuard(dedup.NewMemory(10), "ns",
		dedup.WithLease(time.Second), dedup.WithTTL(time.Minute),
		dedup.WithKey(func(r *kgo.Record) string { return string(r.Key) }),
		kdeliver.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	if k := g.Key(&kgo.Record{Key: []byte("k")}); k != "ns:k" {
		t.Errorf("Key = %q, want the namespace then the key function's result", k)
	}
	if k := g.Key(&kgo.Record{}); k != "" {
		t.Errorf("Key of a record without a key = %q, want \"\"", k)
	}
}
