// Package durability proves kdeliver's producer and consumer guarantees on
// real Apache Kafka by killing things: brokers that lead a partition, the
// only broker, two brokers of three, and consumer processes in mid-stream.
// It holds only tests; this file documents them.
//
// # Running
//
// From the integration module, with Kafka's jars fetched by .ci/kafka/fetch:
//
//	cd integration
//	KDELIVER_KAFKA_HOME=$(../.ci/kafka/fetch) KDELIVER_KAFKA_BACKEND=process \
//		KDELIVER_REQUIRE_KAFKA=1 go test -race -count=1 -timeout 20m -v ./durability/
//
// The container backend (testcontainers-go) works the same way; see the
// integration package for how a backend is chosen. With KDELIVER_REQUIRE_KAFKA=1
// a fall back to kfake fails the run. Without it, on kfake, the tests that
// need replicas or broker restarts are skipped with the reason, and the
// others (consumer kills, producers without faults) run.
//
// [TestThreeNodes] runs on a three-node cluster (replication factor 3,
// min.insync.replicas 2, unclean leader election off), [TestSingleNode] on
// one node; -run picks one. Each test starts its cluster once and shares it
// among its subtests; the two never run at the same time.
//
// Every scenario logs one line starting with "RESULT " and made of key=value
// fields (scenario, semantics, nodes, kafka, records, lost, duplicated, ...),
// which RELIABILITY.md copies.
//
// # Scenarios
//
// Producer durability (after Kafka's replication_test, hard_bounce): an
// AtLeastOnce, an ExactlyOnce (transactions of 500 records) and two
// AtMostOnce producers (acks=0, the default, and acks=1 with
// producer.WithLeaderAck) write to one topic of 3 partitions at about 1,000
// records a second each, until each has written at least 30,000 and the
// leader of partition 0 has been SIGKILLed, replaced by a new leader and
// restarted 3 times. All four see the same faults. Values carry the writer
// and a sequence number, and the topic is read back whole (read_committed,
// which hides only aborted transactional records, once no transaction is
// open). AtLeastOnce and ExactlyOnce: no acknowledged record lost, none
// duplicated, and for ExactlyOnce no record of an aborted transaction
// visible. AtMostOnce: nothing duplicated; the records lost are counted, and
// no run of losses may last longer than two of the preset's metadata
// refreshes (longer means a producer writing to a node that no longer
// leads). On one node the producers run without faults.
//
// Consumer commit order (after Kafka's OffsetValidationTest, hard failure):
// a consumer runs as a separate process (this test binary re-executed) and
// appends what its handler saw to a file, one write(2) per record, which a
// SIGKILL cannot undo (the data is in the kernel's page cache, not the
// process). It is SIGKILLed at 20 %, 45 % and 70 % of a pre-filled topic and
// a new process takes over; the last one is stopped with SIGTERM once the
// group has committed everything. AtLeastOnce: no record lost, duplicates
// counted (at most a commit interval's worth of records and a poll per
// kill). AtMostOnce: no record handled twice, losses counted (at most one
// poll's worth per kill).
//
// Group protocols: the consumer kills of [TestThreeNodes] and
// [TestConcurrentConsumerKills] run again with
// kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol) (KIP-848:
// TestThreeNodes/ConsumerKills848, TestConcurrentConsumerKills/consumer),
// with the same bounds. The broker owns the session timeout and heartbeat
// interval there, so these clusters set group.consumer.session.timeout.ms
// to 6 s and group.consumer.heartbeat.interval.ms to 1 s (and lower their
// minimums), the classic helpers' values; each run checks that the broker
// lists the group as a consumer-protocol group.
//
// Not enough replicas: with 2 of 3 nodes SIGKILLed, an AtLeastOnce Produce
// with a 10 s delivery timeout must return a *kdeliver.DeliveryError (not
// hang, not succeed); after the nodes restart the same producer writes again
// and every acknowledged record is read back once. On one node the same
// happens with the only node down.
//
// # Limits
//
// All nodes share one disk and page cache, so a SIGKILLed broker loses
// nothing it wrote to the page cache: these tests do not model power loss.
// There are no network partitions or clock faults.
package durability
