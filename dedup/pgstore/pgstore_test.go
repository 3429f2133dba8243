package pgstore_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/dedup/internal/testenv"
	"github.com/kdeliver/kdeliver/dedup/pgstore"
	"github.com/kdeliver/kdeliver/dedup/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pool connects to the PostgreSQL of KDELIVER_POSTGRES_URL.
func pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	url := testenv.Get(t, "KDELIVER_POSTGRES_URL", "PostgreSQL")
	p, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	if err := p.Ping(context.Background()); err != nil {
		testenv.Unreachable(t, "PostgreSQL", err)
	}
	return p
}

func TestConformance(t *testing.T) {
	p := pool(t)
	s := pgstore.New(p)
	if err := s.CreateTable(context.Background()); err != nil {
		t.Fatal(err)
	}
	storetest.Run(t, func(*testing.T) dedup.Store { return s })
	if _, err := s.Purge(context.Background()); err != nil {
		t.Fatal(err)
	}
}
