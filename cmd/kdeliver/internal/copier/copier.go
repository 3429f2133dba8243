// Package copier is the pipeline `kdeliver verify` runs when it is given
// none: it copies every record of an input topic to an output topic, key and
// value unchanged, until its ctx ends, in one of three ways that each keep a
// different guarantee when the process is killed:
//
//   - [EOS]: an eos.Session (input offsets committed in the output's
//     transaction): exactly once for read_committed readers of the output.
//   - [ALO]: an at-least-once consumer that writes each batch with an
//     at-least-once producer before its offsets are committed, every
//     [Config.CommitInterval]: a kill repeats what was copied since the last
//     commit, so the output holds duplicates, never gaps.
//   - [AMO]: an at-most-once consumer (offsets committed before the batch is
//     written) with an acks=0 producer: a kill loses what was polled but not
//     yet written, never repeats it.
//
// The tests of `kdeliver verify` run the three under SIGKILL and expect the
// checker to tell them apart.
package copier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/eos"
	"github.com/kdeliver/kdeliver/producer"
)

// Mode is how the copier copies.
type Mode string

// The modes.
const (
	EOS Mode = "eos" // eos.Session: exactly once
	ALO Mode = "alo" // consumer + producer, commit after writing: at least once
	AMO Mode = "amo" // consumer + producer, commit before writing: at most once
)

// ParseMode parses "eos", "alo" or "amo".
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case EOS, ALO, AMO:
		return m, nil
	}
	return "", fmt.Errorf("unknown copier mode %q: use eos, alo or amo", s)
}

// Config is what to copy, and how.
type Config struct {
	Brokers       []string
	Input, Output string
	// Group is the consumer group; it must be the same across restarts.
	// EOS uses Group+"-txn" as its transactional ID.
	Group string
	Mode  Mode
	// SessionTimeout is the group session timeout: a killed instance holds
	// its partitions this long. TxnTimeout (EOS) must be below it.
	SessionTimeout, TxnTimeout time.Duration
	// CommitInterval is how often ALO commits (default 2s): what a kill
	// repeats.
	CommitInterval time.Duration
	// Delay is slept per record copied, to spread a copy over a run.
	Delay  time.Duration
	Logger *slog.Logger // nil: slog.Default()
	// Conn are the connection options (kdeliver.WithTLS, WithSASL, ...)
	// of every client.
	Conn []kdeliver.Option
}

// With returns conn followed by more, as options of one package
// (producer.Option, consumer.Option or eos.Option): what every kdeliver
// client of a command takes.
func With[O any](conn []kdeliver.Option, more ...O) []O {
	out := make([]O, 0, len(conn)+len(more))
	for _, o := range conn {
		out = append(out, any(o).(O)) // a kdeliver.Option is every package's Option
	}
	return append(out, more...)
}

// Run copies until ctx ends, then stops gracefully (EOS and ALO commit what
// they copied) and returns nil; it returns an error if the copy fails.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.CommitInterval <= 0 {
		cfg.CommitInterval = 2 * time.Second
	}
	switch cfg.Mode {
	case EOS:
		return runEOS(ctx, cfg)
	case ALO:
		return runPlain(ctx, cfg, kdeliver.AtLeastOnce)
	case AMO:
		return runPlain(ctx, cfg, kdeliver.AtMostOnce)
	}
	return fmt.Errorf("unknown copier mode %q: use eos, alo or amo", cfg.Mode)
}

func runEOS(ctx context.Context, cfg Config) error {
	s, err := eos.New(cfg.Brokers, cfg.Group, []string{cfg.Input}, cfg.Group+"-txn", With[eos.Option](cfg.Conn,
		eos.WithOutputTopic(cfg.Output),
		eos.WithSessionTimeout(cfg.SessionTimeout),
		eos.WithTransactionTimeout(cfg.TxnTimeout),
		eos.WithCommitEvery(250, 100*time.Millisecond),
		kdeliver.WithLogger(cfg.Logger),
		eos.WithKgoOpts(kgo.MetadataMinAge(time.Second), kgo.HeartbeatInterval(cfg.SessionTimeout/10)))...)
	if err != nil {
		return err
	}
	err = s.Run(ctx, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		sleep(cfg.Delay)
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
		return nil
	})
	return errors.Join(err, s.Close(context.WithoutCancel(ctx)))
}

func runPlain(ctx context.Context, cfg Config, sem kdeliver.Semantics) error {
	p, err := producer.New(cfg.Brokers, sem, With[producer.Option](cfg.Conn, kdeliver.WithLogger(cfg.Logger),
		producer.WithKgoOpts(kgo.MetadataMinAge(time.Second)))...)
	if err != nil {
		return err
	}
	defer p.Close(context.WithoutCancel(ctx))
	c, err := consumer.New(cfg.Brokers, cfg.Group, []string{cfg.Input}, sem, With[consumer.Option](cfg.Conn,
		kdeliver.WithLogger(cfg.Logger),
		consumer.WithCommitInterval(cfg.CommitInterval),
		consumer.WithKgoOpts(kgo.SessionTimeout(cfg.SessionTimeout), kgo.HeartbeatInterval(cfg.SessionTimeout/10),
			kgo.RebalanceTimeout(cfg.SessionTimeout),
			kgo.MetadataMinAge(time.Second)))...)
	if err != nil {
		return err
	}
	err = c.RunBatch(ctx, func(ctx context.Context, recs []*kgo.Record) error {
		out := make([]*kgo.Record, len(recs))
		for i, in := range recs {
			sleep(cfg.Delay)
			out[i] = &kgo.Record{Topic: cfg.Output, Key: in.Key, Value: in.Value}
		}
		return p.Send(ctx, out...)
	})
	return errors.Join(err, c.Close(context.WithoutCancel(ctx)))
}

func sleep(d time.Duration) {
	if d > 0 {
		time.Sleep(d)
	}
}
