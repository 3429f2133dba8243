// Package ready checks, before a consumer or an exactly-once session starts
// reading, that the brokers answer and that the topics it needs exist, so
// that a wrong address or a missing topic fails within a bound with an error
// that names it, instead of a Run that waits silently until its ctx ends.
package ready

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/fatal"
)

// Check asks once whether a broker answers and every topic exists. It
// returns nil, or an error matching [kdeliver.ErrUnreachable] or
// [kdeliver.ErrTopicNotFound] (also kerr.UnknownTopicOrPartition), or one
// of sc that no retry fixes ([fatal.Kind]: the client may not describe a
// topic, the brokers refused its credentials or TLS handshake).
func Check(ctx context.Context, cl *kgo.Client, sc fatal.Scope, topics []string) error {
	if err := cl.Ping(ctx); err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return err
		}
		if ferr := sc.Err(err); ferr != nil {
			return ferr
		}
		return unreachable(sc.Brokers, err)
	}
	if len(topics) == 0 {
		return nil
	}
	req := kmsg.NewPtrMetadataRequest()
	req.AllowAutoTopicCreation = false
	for _, t := range topics {
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(t)
		req.Topics = append(req.Topics, rt)
	}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return err
		}
		if ferr := sc.Err(err); ferr != nil {
			return ferr
		}
		return unreachable(sc.Brokers, err)
	}
	var missing, denied []string
	for _, rt := range resp.Topics {
		name := ""
		if rt.Topic != nil {
			name = *rt.Topic
		}
		switch err := kerr.ErrorForCode(rt.ErrorCode); {
		case err == nil:
		case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.UnknownTopicID):
			missing = append(missing, name)
		case errors.Is(err, kerr.TopicAuthorizationFailed):
			denied = append(denied, name)
		default:
			// LEADER_NOT_AVAILABLE and the like: the topic exists; the
			// client waits for its leaders itself.
		}
	}
	if len(denied) > 0 {
		// Describe is missing; Read and Write imply it.
		return sc.Err(kerr.TopicAuthorizationFailed, denied...)
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return &missingError{topics: missing}
	}
	return nil
}

// Wait repeats [Check] until it succeeds, fails for good (a failure no
// retry fixes: [fatal.Kind]), ctx ends (Wait then returns ctx's error), or
// bound passes (Wait returns Check's last error, saying how long it waited;
// connections the brokers closed at once all along are taken for an
// authentication failure, see [fatal.Suspect]). log gets one warning when
// the first check fails, so a wait of many seconds is not silent.
func Wait(ctx context.Context, cl *kgo.Client, sc fatal.Scope, topics []string, bound time.Duration, log *slog.Logger) error {
	deadline := time.Now().Add(bound)
	wait := 100 * time.Millisecond
	var last error
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithDeadline(ctx, deadline)
		err := Check(cctx, cl, sc, topics)
		cut := cctx.Err() != nil // the bound ended the attempt
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err == nil:
			return nil
		case fatal.Kind(err) != nil:
			return err
		case !cut:
			last = err
		case last == nil:
			last = unreachable(sc.Brokers, err)
		}
		if !time.Now().Before(deadline) {
			if fatal.Suspect(last) {
				return sc.Persisting(last, bound)
			}
			return withBound(last, bound)
		}
		if attempt == 1 {
			log.Warn("kdeliver: waiting for the brokers and topics before reading", "err", err, "up_to", bound)
		}
		t := time.NewTimer(min(wait, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// Watch repeats [Check] every interval while a consumer or session runs,
// until ctx ends, on the client that client returns (nil: that check is
// skipped), and calls stop, then returns, once the client cannot go on:
// at once on a failure no retry fixes ([fatal.Kind]: a Describe ACL
// revoked, credentials refused), and when a topic is missing, or every
// connection is closed at once ([fatal.Suspect]), at two checks in a row,
// that is for at least interval. kgo reports neither a deleted topic nor
// refused credentials to a consumer: it retries them silently, so without
// the watch such a Run would read nothing for ever. Unreachable brokers are
// left to kgo, which reconnects.
func Watch(ctx context.Context, client func() *kgo.Client, sc fatal.Scope, topics []string, interval time.Duration, stop func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var since time.Time // when the failure seen at the last check was first seen
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cl := client()
		if cl == nil {
			since = time.Time{}
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, interval)
		err := Check(cctx, cl, sc, topics)
		cancel()
		var me *missingError
		switch {
		case ctx.Err() != nil:
			return
		case fatal.Kind(err) != nil:
			stop(err)
			return
		case errors.As(err, &me), fatal.Suspect(err):
			if since.IsZero() {
				since = time.Now()
				continue
			}
			if fatal.Suspect(err) {
				stop(sc.Persisting(err, time.Since(since).Round(10*time.Millisecond)))
			} else {
				c := *me
				c.bound, c.running = time.Since(since).Round(10*time.Millisecond), true
				stop(&c)
			}
			return
		default:
			since = time.Time{}
		}
	}
}

func unreachable(brokers []string, err error) error {
	return &unreachableError{brokers: brokers, err: err}
}

type unreachableError struct {
	brokers []string
	err     error
	bound   time.Duration
}

func (e *unreachableError) Error() string {
	within := ""
	if e.bound > 0 {
		within = fmt.Sprintf(" within %v", e.bound)
	}
	return fmt.Sprintf("kdeliver: no broker of %s answered%s (last error: %v): check the addresses, that the brokers run and listen there, and the TLS/SASL settings; kdeliver.WithStartTimeout waits longer",
		strings.Join(e.brokers, ","), within, e.err)
}

func (e *unreachableError) Is(target error) bool { return target == kdeliver.ErrUnreachable }
func (e *unreachableError) Unwrap() error        { return e.err }

type missingError struct {
	topics  []string
	bound   time.Duration
	running bool // found missing while running, after the start
}

func (e *missingError) Error() string {
	s := "s " + strings.Join(e.topics, ", ") + " do"
	if len(e.topics) == 1 {
		s = " " + e.topics[0] + " does"
	}
	if e.running {
		return fmt.Sprintf("kdeliver: topic%s not exist any more (missing for %v while running; deleted?): recreate it, or stop reading it", s, e.bound)
	}
	within := ""
	if e.bound > 0 {
		within = fmt.Sprintf(" (waited %v)", e.bound)
	}
	return fmt.Sprintf("kdeliver: topic%s not exist%s: create it (most clusters do not create topics on first use) or fix the name; kdeliver.WithStartTimeout waits longer", s, within)
}

func (e *missingError) Is(target error) bool {
	return target == kdeliver.ErrTopicNotFound || target == kerr.UnknownTopicOrPartition
}

func withBound(err error, bound time.Duration) error {
	var ue *unreachableError
	var me *missingError
	switch {
	case errors.As(err, &ue):
		c := *ue
		c.bound = bound
		return &c
	case errors.As(err, &me):
		c := *me
		c.bound = bound
		return &c
	}
	return err
}

// Missing returns the error for topics found missing while running (an
// output topic a produce found unknown), after waiting bound.
func Missing(bound time.Duration, topics ...string) error {
	return &missingError{topics: topics, bound: bound}
}

// ConsumerProtocol checks that the brokers serve KIP-848's consumer group
// protocol: ConsumerGroupHeartbeat v1 or later, and the group.version
// feature finalized at 1 or more. Without them kgo falls back to the
// classic protocol without a word; a client built for the consumer
// protocol fails instead with an error matching [kdeliver.ErrUnsupported].
func ConsumerProtocol(ctx context.Context, cl *kgo.Client, sc fatal.Scope) error {
	resp, err := kmsg.NewPtrApiVersionsRequest().RequestWith(ctx, cl)
	if err == nil {
		err = kerr.ErrorForCode(resp.ErrorCode)
	}
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return err
		}
		if ferr := sc.Err(err); ferr != nil {
			return ferr
		}
		return unreachable(sc.Brokers, err)
	}
	var hb int16 = -1
	for _, k := range resp.ApiKeys {
		if k.ApiKey == int16(kmsg.ConsumerGroupHeartbeat) {
			hb = k.MaxVersion
		}
	}
	var level int16
	for _, f := range resp.FinalizedFeatures {
		if f.Name == "group.version" {
			level = f.MaxVersionLevel
		}
	}
	if hb >= 1 && level >= 1 {
		return nil
	}
	return fmt.Errorf("%w: kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol) needs KIP-848's consumer group protocol, "+
		"and the brokers %v answer ConsumerGroupHeartbeat up to version %d (1 needed) with the group.version feature at %d (1 needed): "+
		"use Kafka 4.0+ (4.3+ recommended) with group.version=1 (kafka-features.sh upgrade --feature group.version=1), or kdeliver.ClassicProtocol",
		kdeliver.ErrUnsupported, sc.Brokers, hb, level)
}
