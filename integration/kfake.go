package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"
)

// kfakeBackend runs franz-go's in-process fake cluster. Its broker IDs start
// at 0, so node n is kfake broker n-1. Stop and Kill remove the broker (the
// data stays: kfake keeps one copy for all brokers); Restart adds it again on
// its old port. Pause is unsupported.
type kfakeBackend struct {
	c     *kfake.Cluster
	ports []int

	mu      sync.Mutex
	up      []bool
	started []bool
}

func newKfake(cfg *config) (nodeBackend, error) {
	c, err := kfake.NewCluster(kfake.NumBrokers(cfg.nodes))
	if err != nil {
		return nil, fmt.Errorf("integration: kfake: %w", err)
	}
	b := &kfakeBackend{c: c, up: make([]bool, cfg.nodes), started: make([]bool, cfg.nodes)}
	for _, a := range c.ListenAddrs() {
		_, p, _ := net.SplitHostPort(a)
		port, _ := strconv.Atoi(p)
		b.ports = append(b.ports, port)
	}
	return b, nil
}

func (b *kfakeBackend) addrs() []string {
	out := make([]string, len(b.ports))
	for i, p := range b.ports {
		out[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	}
	return out
}

func (b *kfakeBackend) brokerIDs() []int32 {
	ids := make([]int32, len(b.ports))
	for i := range ids {
		ids[i] = int32(i)
	}
	return ids
}

func (b *kfakeBackend) version(context.Context) (string, error) { return "kfake", nil }

func (b *kfakeBackend) start(_ context.Context, node int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := node - 1
	if b.up[i] {
		return nil
	}
	if b.started[i] { // NewCluster started it the first time
		if _, _, err := b.c.AddNode(int32(i), b.ports[i]); err != nil {
			return fmt.Errorf("kfake: add node: %w", err)
		}
	}
	b.started[i], b.up[i] = true, true
	return nil
}

func (b *kfakeBackend) exited(context.Context, int) error { return nil }

func (b *kfakeBackend) remove(node int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.up[node-1] {
		return nil
	}
	if err := b.c.RemoveNode(int32(node - 1)); err != nil {
		return fmt.Errorf("%w: kfake: %v", ErrUnsupported, err)
	}
	b.up[node-1] = false
	return nil
}

func (b *kfakeBackend) stop(_ context.Context, node int) error { return b.remove(node) }
func (b *kfakeBackend) kill(_ context.Context, node int) error { return b.remove(node) }
func (b *kfakeBackend) pause(context.Context, int) error {
	return errors.Join(ErrUnsupported, errors.New("kfake cannot pause a broker"))
}
func (b *kfakeBackend) resume(context.Context, int) error {
	return errors.Join(ErrUnsupported, errors.New("kfake cannot pause a broker"))
}
func (b *kfakeBackend) logTail(int, int) string     { return "" }
func (b *kfakeBackend) close(context.Context) error { b.c.Close(); return nil }
