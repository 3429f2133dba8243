//go:build soak

package eostest

import (
	"strconv"
	"testing"
)

// The long variants: run with
//
//	KDELIVER_KAFKA_HOME=... KDELIVER_REQUIRE_KAFKA=1 go test -tags soak -run Soak -v -timeout 3h ./integration/eostest/

// T1 at Kafka's own scale of faults: 100,000 records, the copier killed 5 times.
func TestSoakT1CopierKilled100k(t *testing.T) {
	t1{n: 100000, inParts: 2, outParts: 3, fault: "copier", at: []float64{0.2, 0.35, 0.5, 0.65, 0.8}, delay: "50us"}.run(t)
}

// T1 with broker kills, twice around the cluster.
func TestSoakT1BrokersKilledTwice(t *testing.T) {
	t1{n: 60000, inParts: 2, outParts: 3, fault: "brokers", at: []float64{0.1, 0.25, 0.4, 0.55, 0.7, 0.85}, delay: "1ms"}.run(t)
}

// Repetitions of the short scenarios (rule of three: 10 clean runs bound the
// per-run failure rate at about 30 %).
func TestSoakRepeat(t *testing.T) {
	for i := range 10 {
		t.Run("T1ordered-"+strconv.Itoa(i), TestT1CopierKilledOrdered)
		t.Run("T2zombie-"+strconv.Itoa(i), TestT2GroupZombie)
		t.Run("T3fence-"+strconv.Itoa(i), TestT3SameTransactionalID)
		t.Run("T3timeout-"+strconv.Itoa(i), TestT3TransactionTimeout)
		t.Run("T3coordinator-"+strconv.Itoa(i), TestT3CoordinatorKilled)
	}
}
