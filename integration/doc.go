// Package integration starts Apache Kafka for tests: one call gives a test a
// running cluster of one or three nodes, node faults (clean stop, SIGKILL,
// pause, restart) and the checks that durability tests need.
//
//	func TestSomething(t *testing.T) {
//		c := integration.Start(t, integration.WithNodes(3))
//		ctx := context.Background()
//		if err := c.CreateTopic(ctx, "orders", 3); err != nil {
//			t.Fatal(err)
//		}
//		cl := c.Client(t) // a *kgo.Client seeded with c.Brokers()
//		...
//	}
//
// # Backends
//
// A [Cluster] runs on one of four backends, chosen in this order:
//
//  1. [WithBackend], else the KDELIVER_KAFKA_BACKEND environment variable
//     (external, container, process or kfake).
//  2. external when KDELIVER_KAFKA_BROKERS is set (comma separated host:port):
//     a cluster someone else runs. Nodes cannot be stopped or killed.
//  3. process when KDELIVER_KAFKA_HOME is set: Kafka's jars run as host
//     processes (java -cp 'libs/*' kafka.Kafka). The folder holds the jars,
//     directly or in libs/, as in a Kafka download or the cache that
//     .ci/kafka/fetch fills (~/.cache/kdeliver/kafka-VERSION).
//  4. container when a Docker API answers (DOCKER_HOST or the default socket):
//     testcontainers-go runs the official apache/kafka image
//     ([DefaultImage]; KDELIVER_KAFKA_IMAGE overrides it), one container
//     per node; see Containers below.
//  5. kfake, franz-go's in-process fake broker, with a logged notice. kfake
//     keeps no replicas, so tests of replication, fencing or durability
//     prove nothing on it.
//
// Set KDELIVER_REQUIRE_KAFKA=1 (CI does) to make any fall back to kfake a
// failure: [Start] calls t.Fatal and [New] returns [ErrKafkaRequired]. A test
// that needs real Kafka can also call [Cluster.RequireReal].
//
// # Containers
//
// The container backend needs nothing but a Docker API (Docker Engine,
// Docker Desktop, or podman's service, rootful or rootless) and an image
// that follows the official apache/kafka image's conventions: every KAFKA_*
// variable is a broker property (KAFKA_LISTENERS is listeners), CLUSTER_ID
// formats the log directory, KAFKA_HEAP_OPTS and KAFKA_OPTS go to the JVM,
// the jars are in /opt/kafka/libs. The harness sets every variable a node
// needs (KRaft combined mode, listeners, replication settings); to use
// another 4.x release of the official image:
//
//	KDELIVER_KAFKA_IMAGE=apache/kafka:4.1.0 KDELIVER_KAFKA_BACKEND=container go test ./...
//
// By default ([NetworkMapped]) the harness creates a network for the
// cluster, on which the nodes reach each other by alias (kafka-1,
// kafka-2, ...: the KRaft quorum on port 9093, replication on 19092), and
// publishes each node's client listener (port 9092 in the container) on a
// free 127.0.0.1 port of the host, chosen before the node starts, which the
// node advertises: [Cluster.Brokers] are those addresses, and a restarted
// node keeps its port. No host networking is needed, so this works on
// Docker Desktop too. A cluster of several nodes needs name resolution on
// its network; where the network cannot be created or the nodes cannot
// resolve each other (podman's CNI network backend without the dnsname
// plugin), the harness logs why and runs the nodes on the host's network
// ([NetworkHost], Linux only) instead. KDELIVER_KAFKA_NETWORK (mapped or
// host) or [WithContainerNetwork] chooses; chosen explicitly, mapped fails
// rather than falling back. [Cluster.ContainerNetwork] says which is in use.
// integration/CONTAINERS.md has the details, podman's set-up among them.
//
// # Nodes
//
// Nodes are numbered 1..[Cluster.Nodes], the same numbers Kafka uses as
// node.id, so [Cluster.Leader] returns a number that [Cluster.Kill] takes.
// Every node is a broker and a KRaft controller (combined mode). A cluster of
// three has replication factor 3, min.insync.replicas 2 and unclean leader
// election off for every topic, the consumer offsets and the transaction
// state; a single node has replication factor 1 and min.insync.replicas 1.
// Auto topic creation is off: use [Cluster.CreateTopic].
//
// [Cluster.Restart] brings a node back on the same ports with the same log
// directory, as after a crash or a reboot.
//
// # Security
//
// [WithSecurity] adds a SASL_SSL listener to every node (process and
// container backends): TLS with a certificate signed by a CA the harness
// makes, SCRAM-SHA-512 users, and Kafka's StandardAuthorizer, so that a
// principal may do only what its ACLs allow. [Cluster.Security] gives the
// listener's addresses, the CA, a super user's admin client, and
// [Security.CreateUser], [Security.Grant] and [Security.Revoke]. The
// PLAINTEXT listener stays, with User:ANONYMOUS a super user (the brokers'
// own requests come as ANONYMOUS over the PLAINTEXT controller and
// replication listeners), so the helpers above keep working without
// credentials; package securitytest checks kdeliver's semantics on the
// SASL_SSL listener with least-privilege ACLs.
//
// # Lifecycle
//
// [Start] registers the cluster's teardown with t.Cleanup; [New] leaves it to
// the caller's [Cluster.Close], which fits a TestMain that shares one cluster
// among the tests of a package (real Kafka takes seconds to start). Every
// wait in this package is bounded by a context or a documented timeout.
//
// # Helpers for durability tests
//
// [StartHelper] runs a test function of the current test binary as a
// separate process that a test can SIGKILL or SIGSTOP ([Process]).
// [Cluster.ReadCommitted] reads a topic fully with read_committed isolation
// (package kdelivertest's exact reader, on the cluster's brokers), and
// kdelivertest.Audit compares what was read with what should be there:
// lost, duplicated, reordered per key, unexpected. The reader and the audit
// are kdelivertest's, not copies, so that a test on kfake and one on real
// Kafka judge the same way.
//
// # Concurrency
//
// A [Cluster]'s methods are safe to call from several goroutines, but node
// operations on the same node must not overlap.
package integration
