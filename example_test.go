package kdeliver_test

import (
	"errors"
	"fmt"

	"github.com/kdeliver/kdeliver"
)

func ExampleParseSemantics() {
	for _, text := range []string{"at_least_once", "EOS", "AtMostOnce", "twice"} {
		s, err := kdeliver.ParseSemantics(text)
		if errors.Is(err, kdeliver.ErrInvalidConfig) {
			fmt.Println(err)
			continue
		}
		fmt.Printf("%s -> %s\n", text, s)
	}
	// Output:
	// at_least_once -> at-least-once
	// EOS -> exactly-once
	// AtMostOnce -> at-most-once
	// kdeliver: invalid configuration: unknown semantics "twice": use one of at-most-once (amo), at-least-once (alo), exactly-once (eos)
}

func ExampleSemantics_Preset() {
	for _, s := range kdeliver.All {
		p := s.Preset()
		fmt.Printf("%s: acks=%s idempotent=%t transactional=%t, commit %s, %s\n",
			s, p.Producer.Acks, p.Producer.Idempotent, p.Producer.Transactional, p.Consumer.CommitOrder, p.Consumer.Isolation)
	}
	// Output:
	// at-most-once: acks=0 idempotent=false transactional=false, commit before processing, read_uncommitted
	// at-least-once: acks=all idempotent=true transactional=false, commit after processing, read_uncommitted
	// exactly-once: acks=all idempotent=true transactional=true, commit in the sink's transaction, read_committed
}

func ExamplePresetTable() {
	fmt.Print(kdeliver.PresetTable())
	// Output:
	// | semantics | acks | idempotent | retries | in flight | delivery timeout | transactional | commit | isolation | auto-commit |
	// |---|---|---|---|---|---|---|---|---|---|
	// | at-most-once | 0 | no | none | 1 | none | no | before processing | read_uncommitted | no |
	// | at-least-once | all | yes | until the delivery timeout | 5 | 2m0s | no | after processing | read_uncommitted | no |
	// | exactly-once | all | yes | until the delivery timeout | 5 | 2m0s | yes | in the sink's transaction | read_committed | no |
}
