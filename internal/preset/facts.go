package preset

import (
	"context"
	"fmt"
	"reflect"
	"regexp"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Facts are a built client's effective settings that a preset depends on,
// read with kgo's OptValue. Every field is comparable, so that what a raw
// option changes can be found by comparing the facts of two clients.
type Facts struct {
	Acks            kgo.Acks
	NoIdempotence   bool
	Retries         int64
	Inflight        int // kgo.MaxProduceRequestsInflightPerBroker (idempotent clients keep up to 5 whatever it says)
	TxnID           string
	HasTxn          bool
	DeliveryTimeout time.Duration
	ManualFlushing  bool
	Consumes        bool // topics or a regex to consume
	Group           string
	AutoCommitOff   bool
	GreedyCommit    bool
	CommitMarks     bool
	Isolation       int8 // 1 is read_committed
	ResetOffset     kgo.Offset
	StartOffset     kgo.Offset
	BlockRebalance  bool
	TxnTimeout      time.Duration
	SessionTimeout  time.Duration
	Heartbeat       time.Duration
	ServerSide      bool   // kgo.ServerSideBalancer: KIP-848 wanted
	Balancer        string // the first balancer's Go type, which decides whether kgo runs KIP-848
}

// FactsOf reads the facts of cl.
func FactsOf(cl *kgo.Client) Facts {
	txn := cl.OptValues(kgo.TransactionalID)
	iso, _ := cl.OptValue(kgo.FetchIsolationLevel).(int8)
	return Facts{
		Acks:            cl.OptValue(kgo.RequiredAcks).(kgo.Acks),
		NoIdempotence:   cl.OptValue(kgo.DisableIdempotentWrite).(bool),
		Retries:         cl.OptValue(kgo.RecordRetries).(int64),
		Inflight:        cl.OptValue(kgo.MaxProduceRequestsInflightPerBroker).(int),
		TxnID:           txn[0].(string),
		HasTxn:          txn[1].(bool),
		DeliveryTimeout: cl.OptValue(kgo.RecordDeliveryTimeout).(time.Duration),
		ManualFlushing:  cl.OptValue(kgo.ManualFlushing).(bool),
		Consumes:        len(cl.OptValue(kgo.ConsumeTopics).(map[string]*regexp.Regexp)) > 0 || cl.OptValue(kgo.ConsumeRegex).(bool),
		Group:           cl.OptValue(kgo.ConsumerGroup).(string),
		AutoCommitOff:   cl.OptValue(kgo.DisableAutoCommit).(bool),
		GreedyCommit:    cl.OptValue(kgo.GreedyAutoCommit).(bool),
		CommitMarks:     cl.OptValue(kgo.AutoCommitMarks).(bool),
		Isolation:       iso,
		ResetOffset:     cl.OptValue(kgo.ConsumeResetOffset).(kgo.Offset),
		StartOffset:     cl.OptValue(kgo.ConsumeStartOffset).(kgo.Offset),
		BlockRebalance:  cl.OptValue(kgo.BlockRebalanceOnPoll).(bool),
		TxnTimeout:      cl.OptValue(kgo.TransactionTimeout).(time.Duration),
		SessionTimeout:  cl.OptValue(kgo.SessionTimeout).(time.Duration),
		Heartbeat:       cl.OptValue(kgo.HeartbeatInterval).(time.Duration),
		ServerSide:      cl.OptValue(kgo.ServerSideBalancer).(bool),
		Balancer:        firstBalancer(cl),
	}
}

// firstBalancer returns the Go type of cl's first group balancer, or "" if
// it has none.
func firstBalancer(cl *kgo.Client) string {
	bs, _ := cl.OptValue(kgo.Balancers).([]kgo.GroupBalancer)
	if len(bs) == 0 {
		return ""
	}
	return fmt.Sprintf("%T", bs[0])
}

// with returns f with the fields that differ between from and to set as in
// to: what a raw option changed, applied to f.
func (f Facts) with(from, to Facts) Facts {
	fv := reflect.ValueOf(&f).Elem()
	a, b := reflect.ValueOf(from), reflect.ValueOf(to)
	for i := range fv.NumField() {
		if !a.Field(i).Equal(b.Field(i)) {
			fv.Field(i).Set(b.Field(i))
		}
	}
	return f
}

// Build builds the kgo client of base (kdeliver's options for a valid
// preset) followed by raw (the caller's WithKgoOpts), and adds to ps what
// check finds wrong with its facts. It returns the client when kgo built
// it, even if check found problems (the caller may check more, then closes
// it), and nil when kgo refused the options (the problems are in ps).
//
// When kgo refuses the whole, each raw option is tried on its own, so that
// every problem is listed: an option kgo accepts over base is kept; one it
// refuses over base (acks=1 on an idempotent client, say) is tried over a
// plain client, and what it changes there is checked against the preset,
// which names the problem in kdeliver's terms with its fix; only an option
// refused everywhere, or one whose conflict check does not name, is reported
// in franz-go's words. Probe clients are built with a cancelled context:
// they connect to nothing.
func Build(base, raw []kgo.Opt, check func(Facts, *Problems), ps *Problems) *kgo.Client {
	before := ps.Len()
	cl, err := kgo.NewClient(append(base, raw...)...)
	if err == nil {
		check(FactsOf(cl), ps)
		return cl
	}
	combined := err
	probeBase := append(append([]kgo.Opt(nil), base...), kgo.WithContext(cancelled()))
	pf, ok := probe(probeBase)
	if !ok {
		// kdeliver's own options are refused: a bug, or a raw option we
		// cannot separate out. Report kgo's words.
		ps.Add(true, fmt.Sprintf("franz-go refused the options (%v): remove or fix the raw kgo option it names", combined))
		return nil
	}
	plain := []kgo.Opt{kgo.WithContext(cancelled()), kgo.ConsumerGroup("kdeliver-probe")}
	plains := [][]kgo.Opt{plain, append(plain[:len(plain):len(plain)], kgo.DisableIdempotentWrite())}
	var accepted []kgo.Opt
	for i, o := range raw {
		if _, ok := probe(append(probeBase[:len(probeBase):len(probeBase)], o)); ok {
			accepted = append(accepted, o)
			continue
		}
		named := false
		for _, p := range plains {
			from, ok := probe(p)
			if !ok {
				continue
			}
			to, ok := probe(append(p[:len(p):len(p)], o))
			if !ok {
				continue
			}
			n := ps.Len()
			check(pf.with(from, to), ps)
			named = ps.Len() > n
			break
		}
		if !named {
			_, oerr := kgo.NewClient(append(probeBase[:len(probeBase):len(probeBase)], o)...)
			ps.Add(true, fmt.Sprintf("raw option %d of %d was refused by franz-go (%v): remove or fix it", i+1, len(raw), oerr))
		}
	}
	if len(accepted) > 0 {
		if _, ok := probe(append(probeBase[:len(probeBase):len(probeBase)], accepted...)); !ok {
			_, aerr := kgo.NewClient(append(probeBase[:len(probeBase):len(probeBase)], accepted...)...)
			ps.Add(true, fmt.Sprintf("franz-go refused the raw options together (%v): remove or fix the one it names", aerr))
		} else {
			cl, _ := kgo.NewClient(append(probeBase[:len(probeBase):len(probeBase)], accepted...)...)
			f := FactsOf(cl)
			cl.Close()
			check(f, ps)
		}
	}
	if ps.Len() == before {
		ps.Add(true, fmt.Sprintf("franz-go refused the options (%v): remove or fix the raw kgo option it names", combined))
	}
	return nil
}

// probe builds a client of opts and returns its facts.
func probe(opts []kgo.Opt) (Facts, bool) {
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return Facts{}, false
	}
	defer cl.Close()
	return FactsOf(cl), true
}

func cancelled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
