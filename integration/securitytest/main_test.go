// Package securitytest checks kdeliver against real Apache Kafka on a
// SASL_SSL listener (integration.WithSecurity: TLS with a CA the test makes,
// SCRAM-SHA-512, Kafka's StandardAuthorizer): each semantics works with
// exactly its least-privilege ACLs (the table in the README), removing any
// one of them makes the first call fail within a bound with
// kdeliver.ErrNotAuthorized and the broker's kerr error instead of
// retrying for ever, a wrong password or a CA that did not sign the
// brokers' certificate fails the first call with kdeliver.ErrAuthentication,
// and no log line (kdeliver's and kgo's, at debug level), error string or
// span of any of these runs shows a password or what the broker keeps of
// one (the SCRAM salted password, stored key and server key).
//
//	cd integration && KDELIVER_KAFKA_HOME=~/.cache/kdeliver/kafka-4.4.0 KDELIVER_KAFKA_BACKEND=process \
//		KDELIVER_REQUIRE_KAFKA=1 go test -race ./securitytest/
//
// Without a real Kafka the tests skip, or fail when KDELIVER_REQUIRE_KAFKA
// is set (kfake has no SASL_SSL listener or authorizer to test).
package securitytest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/kdeliver/kdeliver/integration"
)

// cluster is shared by the tests: one node with a SASL_SSL listener.
var cluster *integration.Cluster

// noCluster says why cluster is nil.
var noCluster error

func TestMain(m *testing.M) {
	ctx := context.Background()
	began := time.Now()
	var err error
	cluster, err = integration.New(ctx, integration.WithNodes(1), integration.WithSecurity())
	switch {
	case err == nil:
		fmt.Printf("1-node %s cluster (Kafka %s) with SASL_SSL at %v started in %s\n",
			cluster.Kind(), cluster.Version(), cluster.Security().Brokers(), time.Since(began).Round(time.Millisecond))
	case errors.Is(err, integration.ErrUnsupported) && !required():
		noCluster = err // the tests skip
	default:
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if cluster != nil {
		if code != 0 {
			cluster.LogTails(func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }, 40)
		}
		cluster.Close(ctx)
	}
	os.Exit(code)
}

func required() bool {
	switch os.Getenv(integration.EnvRequire) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

// need skips a test when there is no cluster with a SASL_SSL listener
// (TestMain has already failed if one was required).
func need(t *testing.T) *integration.Security {
	t.Helper()
	if cluster == nil {
		t.Skipf("needs real Kafka with a SASL_SSL listener: %v", noCluster)
	}
	cluster.RequireReal(t)
	return cluster.Security()
}
