package dedup

import (
	"container/list"
	"context"
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Memory is a [Store] held in this process's memory: a map bounded to a
// maximum number of keys, least recently used evicted first, each entry
// expiring after its lease or TTL.
//
// It deduplicates within one process only, and forgets everything when the
// process stops: use it for tests, or for a single consumer whose duplicates
// come from producer retries and in-process redelivery. A key evicted by the
// bound before its TTL can be processed again; size the bound above the
// number of keys expected within one TTL.
type Memory struct {
	max    int
	now    func() time.Time
	prefix string
	seq    atomic.Uint64

	mu    sync.Mutex
	items map[string]*list.Element
	lru   list.List // front: most recently used; values are *memEntry
}

type memEntry struct {
	key     string
	token   string // "" when done
	expires time.Time
}

// NewMemory returns a memory store holding at most max keys. max must be
// positive.
func NewMemory(max int) *Memory {
	if max <= 0 {
		panic("dedup: NewMemory: max must be positive, got " + strconv.Itoa(max))
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	return &Memory{max: max, now: time.Now, prefix: hex.EncodeToString(b[:]) + "-", items: make(map[string]*list.Element)}
}

// Len returns the number of keys held, expired ones included until they are
// evicted or touched.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.items)
}

// Reserve implements [Store].
func (m *Memory) Reserve(ctx context.Context, key string, lease time.Duration) (Status, string, error) {
	if err := ctx.Err(); err != nil {
		return 0, "", err
	}
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.items[key]; ok {
		e := el.Value.(*memEntry)
		if now.Before(e.expires) {
			m.lru.MoveToFront(el)
			if e.token == "" {
				return Done, "", nil
			}
			return Held, "", nil
		}
		token := m.token()
		e.token, e.expires = token, now.Add(lease)
		m.lru.MoveToFront(el)
		return Acquired, token, nil
	}
	token := m.token()
	m.put(&memEntry{key: key, token: token, expires: now.Add(lease)})
	return Acquired, token, nil
}

// Confirm implements [Store].
func (m *Memory) Confirm(ctx context.Context, key string, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	expires := m.now().Add(ttl)
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.items[key]; ok {
		e := el.Value.(*memEntry)
		e.token, e.expires = "", expires
		m.lru.MoveToFront(el)
		return nil
	}
	m.put(&memEntry{key: key, expires: expires})
	return nil
}

// Release implements [Store].
func (m *Memory) Release(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.items[key]; ok && token != "" && el.Value.(*memEntry).token == token {
		m.lru.Remove(el)
		delete(m.items, key)
	}
	return nil
}

// put adds e, evicting the least recently used entry when full. m.mu is held.
func (m *Memory) put(e *memEntry) {
	if len(m.items) >= m.max {
		old := m.lru.Back()
		m.lru.Remove(old)
		delete(m.items, old.Value.(*memEntry).key)
	}
	m.items[e.key] = m.lru.PushFront(e)
}

func (m *Memory) token() string {
	return m.prefix + strconv.FormatUint(m.seq.Add(1), 36)
}
