package integration

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// externalBackend is a cluster someone else runs: no node control.
type externalBackend struct {
	brokers []string
	ids     []int32
}

func newExternal(ctx context.Context, cfg *config) (nodeBackend, error) {
	var seeds []string
	for _, s := range strings.Split(os.Getenv(EnvBrokers), ",") {
		if s = strings.TrimSpace(s); s != "" {
			seeds = append(seeds, s)
		}
	}
	if len(seeds) == 0 {
		return nil, fmt.Errorf("integration: external backend: %s is empty", EnvBrokers)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.DialTimeout(3*time.Second))
	if err != nil {
		return nil, fmt.Errorf("integration: external backend: %w", err)
	}
	defer cl.Close()
	var m kadm.Metadata
	err = poll(ctx, 500*time.Millisecond, "reach "+strings.Join(seeds, ","), func(ctx context.Context) (bool, string, error) {
		m, err = kadm.NewClient(cl).BrokerMetadata(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		return true, "", nil
	})
	if err != nil {
		return nil, err
	}
	b := &externalBackend{}
	for _, bd := range m.Brokers {
		b.ids = append(b.ids, bd.NodeID)
	}
	slices.Sort(b.ids)
	for _, id := range b.ids {
		i := slices.IndexFunc(m.Brokers, func(bd kadm.BrokerDetail) bool { return bd.NodeID == id })
		b.brokers = append(b.brokers, fmt.Sprintf("%s:%d", m.Brokers[i].Host, m.Brokers[i].Port))
	}
	if len(b.ids) < cfg.nodes {
		return nil, fmt.Errorf("integration: external cluster %s has %d broker(s), the test wants %d",
			strings.Join(seeds, ","), len(b.ids), cfg.nodes)
	}
	return b, nil
}

func (b *externalBackend) addrs() []string                         { return b.brokers }
func (b *externalBackend) brokerIDs() []int32                      { return b.ids }
func (b *externalBackend) version(context.Context) (string, error) { return "", nil }
func (b *externalBackend) start(context.Context, int) error        { return ErrUnsupported }
func (b *externalBackend) exited(context.Context, int) error       { return nil }
func (b *externalBackend) stop(context.Context, int) error         { return ErrUnsupported }
func (b *externalBackend) kill(context.Context, int) error         { return ErrUnsupported }
func (b *externalBackend) pause(context.Context, int) error        { return ErrUnsupported }
func (b *externalBackend) resume(context.Context, int) error       { return ErrUnsupported }
func (b *externalBackend) close(context.Context) error             { return nil }
func (b *externalBackend) logTail(int, int) string                 { return "" }
