// Package testenv finds the servers that the dedup stores are tested
// against. .ci/services.sh starts them and sets the variables.
package testenv

import (
	"os"
	"testing"
)

// Required reports whether CI asked for the servers
// (KDELIVER_REQUIRE_SERVICES=1): a missing server then fails the test.
func Required() bool { return os.Getenv("KDELIVER_REQUIRE_SERVICES") == "1" }

// Get returns the variable's value. When it is unset, the test is skipped,
// or fails when [Required].
func Get(t testing.TB, name, what string) string {
	t.Helper()
	v := os.Getenv(name)
	if v != "" {
		return v
	}
	if Required() {
		t.Fatalf("%s is unset but KDELIVER_REQUIRE_SERVICES=1: start %s with `eval \"$(bash .ci/services.sh)\"`", name, what)
	}
	t.Skipf("%s is unset: no %s to test against (eval \"$(bash .ci/services.sh)\" starts one)", name, what)
	return ""
}

// Unreachable reports a server that is configured but does not answer:
// always a failure, since the variable promised it.
func Unreachable(t testing.TB, what string, err error) {
	t.Helper()
	t.Fatalf("%s configured but unreachable: %v", what, err)
}
