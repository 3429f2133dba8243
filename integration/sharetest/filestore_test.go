//go:build unix

package sharetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/dedup/storetest"
)

// fileStore is a [dedup.Store] that the consumer processes of the guard
// test share: one append-only log file on the local disk, each operation
// done under an exclusive flock(2) of it. The dedup stores that work
// across processes otherwise (dedup/pgstore, dedup/redisstore) are modules
// of their own, with pgx or go-redis and a server to run; this one needs
// nothing, and it keeps the property the test needs: a SIGKILLed holder's
// flock is dropped by the kernel, and every change is one write(2), which
// a SIGKILL cannot cut in half.
//
// The log's lines (keys in unpadded URL base64, times in Unix nanoseconds):
//
//	L key token leaseEnd    Reserve took a lease
//	R key token             Release ended it
//	D key doneEnd effect    Confirm (effect "-") or confirmEffect: done
//
// A store replays the lines other processes appended before each
// operation, under the lock, so every process decides on the same state.
// confirmEffect writes the side effect and the done mark in the same line:
// the "transaction" of [dedup.ConfirmInTx], which no crash can split, so
// the guard test can demand each effect exactly once.
type fileStore struct {
	mu   sync.Mutex
	f    *os.File
	off  int64 // bytes of the log applied to keys
	keys map[string]*keyState
}

type keyState struct {
	token    string
	leaseEnd time.Time
	doneEnd  time.Time
}

// openFileStore opens (or creates) the store's log at path.
func openFileStore(path string) (*fileStore, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	return &fileStore{f: f, keys: map[string]*keyState{}}, nil
}

func (s *fileStore) Close() error { return s.f.Close() }

// locked runs fn holding the store's lock, after replaying the log.
func (s *fileStore) locked(ctx context.Context, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock() // flock locks the open file, not the goroutine
	defer s.mu.Unlock()
	fd := int(s.f.Fd())
	if err := syscall.Flock(fd, syscall.LOCK_EX); err != nil {
		return fmt.Errorf("%w: flock: %v", dedup.ErrStore, err)
	}
	defer syscall.Flock(fd, syscall.LOCK_UN)
	if err := s.catchUp(); err != nil {
		return err
	}
	return fn()
}

// catchUp applies the lines appended since the last call.
func (s *fileStore) catchUp() error {
	buf, err := io.ReadAll(io.NewSectionReader(s.f, s.off, 1<<62))
	if err != nil {
		return fmt.Errorf("%w: read: %v", dedup.ErrStore, err)
	}
	// Every line is one write under the lock: a partial one is impossible.
	for line := range bytes.Lines(buf) {
		if err := s.apply(string(line)); err != nil {
			return err
		}
	}
	s.off += int64(len(buf))
	return nil
}

func (s *fileStore) apply(line string) error {
	f := strings.Fields(line)
	if len(f) < 3 || !strings.HasSuffix(line, "\n") {
		return fmt.Errorf("%w: bad log line %q", dedup.ErrStore, line)
	}
	st := s.keys[f[1]]
	if st == nil {
		st = &keyState{}
		s.keys[f[1]] = st
	}
	at := func(v string) time.Time {
		n, _ := strconv.ParseInt(v, 10, 64)
		return time.Unix(0, n)
	}
	switch {
	case f[0] == "L" && len(f) == 4:
		st.token, st.leaseEnd = f[2], at(f[3])
	case f[0] == "R" && len(f) == 3:
		if st.token == f[2] {
			st.token, st.leaseEnd = "", time.Time{}
		}
	case f[0] == "D" && len(f) >= 4:
		st.token, st.leaseEnd, st.doneEnd = "", time.Time{}, at(f[2])
	default:
		return fmt.Errorf("%w: bad log line %q", dedup.ErrStore, line)
	}
	return nil
}

// appendLine writes line (under the lock, after catchUp) and applies it.
func (s *fileStore) appendLine(line string) error {
	if _, err := s.f.WriteString(line); err != nil {
		return fmt.Errorf("%w: write: %v", dedup.ErrStore, err)
	}
	s.off += int64(len(line))
	return s.apply(line)
}

func encodeKey(key string) string { return base64.RawURLEncoding.EncodeToString([]byte(key)) }

func (s *fileStore) Reserve(ctx context.Context, key string, lease time.Duration) (st dedup.Status, token string, err error) {
	err = s.locked(ctx, func() error {
		k := encodeKey(key)
		now := time.Now()
		if ks := s.keys[k]; ks != nil {
			switch {
			case ks.doneEnd.After(now):
				st = dedup.Done
				return nil
			case ks.token != "" && ks.leaseEnd.After(now):
				st = dedup.Held
				return nil
			}
		}
		tok := rand.Text()
		if err := s.appendLine(fmt.Sprintf("L %s %s %d\n", k, tok, now.Add(lease).UnixNano())); err != nil {
			return err
		}
		st, token = dedup.Acquired, tok
		return nil
	})
	if err != nil {
		return 0, "", err
	}
	return st, token, nil
}

func (s *fileStore) Confirm(ctx context.Context, key string, ttl time.Duration) error {
	return s.confirmEffect(ctx, key, ttl, "-")
}

// confirmEffect marks key done for ttl and records effect (no spaces
// needed: the rest of the line) in the same write.
func (s *fileStore) confirmEffect(ctx context.Context, key string, ttl time.Duration, effect string) error {
	if effect == "" || strings.Contains(effect, "\n") {
		return fmt.Errorf("fileStore: bad effect %q", effect)
	}
	return s.locked(ctx, func() error {
		return s.appendLine(fmt.Sprintf("D %s %d %s\n", encodeKey(key), time.Now().Add(ttl).UnixNano(), effect))
	})
}

func (s *fileStore) Release(ctx context.Context, key, token string) error {
	return s.locked(ctx, func() error {
		k := encodeKey(key)
		if ks := s.keys[k]; ks == nil || ks.token != token || ks.doneEnd.After(time.Now()) {
			return nil
		}
		return s.appendLine(fmt.Sprintf("R %s %s\n", k, token))
	})
}

// readEffects returns the effects recorded in the store's log at path, in
// log order (Confirm's "-" left out).
func readEffects(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for line := range strings.Lines(string(data)) {
		f := strings.SplitN(strings.TrimSuffix(line, "\n"), " ", 4)
		if f[0] == "D" && len(f) == 4 && f[3] != "-" {
			out = append(out, f[3])
		}
	}
	return out, nil
}

// TestFileStore runs the stores' conformance suite on fileStore, each
// subtest with two stores on one log, as two processes would have.
func TestFileStore(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) dedup.Store {
		path := filepath.Join(t.TempDir(), "store")
		a, err := openFileStore(path)
		if err != nil {
			t.Fatal(err)
		}
		b, err := openFileStore(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close(); b.Close() })
		return &alternating{stores: [2]dedup.Store{a, b}}
	})
}

// alternating sends each call to the next of two stores on one log.
type alternating struct {
	mu     sync.Mutex
	n      int
	stores [2]dedup.Store
}

func (a *alternating) next() dedup.Store {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.n++
	return a.stores[a.n%2]
}

func (a *alternating) Reserve(ctx context.Context, key string, lease time.Duration) (dedup.Status, string, error) {
	return a.next().Reserve(ctx, key, lease)
}

func (a *alternating) Confirm(ctx context.Context, key string, ttl time.Duration) error {
	return a.next().Confirm(ctx, key, ttl)
}

func (a *alternating) Release(ctx context.Context, key, token string) error {
	return a.next().Release(ctx, key, token)
}
