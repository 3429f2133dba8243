package main

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRun runs the example on an embedded cluster against the PostgreSQL of
// KDELIVER_POSTGRES_URL: every order is in the table once after the stop and
// the resume. Without the variable it is skipped, unless
// KDELIVER_REQUIRE_SERVICES=1 (CI) makes that a failure.
func TestRun(t *testing.T) {
	url := os.Getenv("KDELIVER_POSTGRES_URL")
	if url == "" {
		if os.Getenv("KDELIVER_REQUIRE_SERVICES") == "1" {
			t.Fatal("KDELIVER_POSTGRES_URL is unset but KDELIVER_REQUIRE_SERVICES=1: start PostgreSQL with `eval \"$(bash .ci/services.sh)\"`")
		}
		t.Skip("KDELIVER_POSTGRES_URL is unset: no PostgreSQL to run the example against")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, url, nil, &out); err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), "1000 orders produced, 1000 rows written, 0 duplicates, 0 lost\n"; got != want {
		t.Fatalf("printed %q, want %q", got, want)
	}
}
