package integration

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
)

// nodePorts are the loopback ports of one node.
type nodePorts struct {
	broker     int // PLAINTEXT listener, for clients and replication
	controller int // CONTROLLER listener, for the KRaft quorum
	secure     int // SASL_SSL listener (WithSecurity), or 0
}

// brokerProps returns the server properties of node (1-based) of a
// combined-mode cluster of nodes nodes: Kafka's settings, the listeners
// (see [loopbackListeners] and [containerListeners]), the secure
// listener's settings if sec is set ([WithSecurity]), then extra. Settings
// follow Kafka's system tests, scaled for two cores (see
// shared/notes/kafka.md).
func brokerProps(node, nodes int, listeners map[string]string, sec *securityConfig, logDir string, extra map[string]string) map[string]string {
	rf := min(3, nodes)
	minISR := 1
	if rf >= 3 {
		minISR = 2
	}
	props := map[string]string{
		"process.roles":                            "broker,controller",
		"node.id":                                  strconv.Itoa(node),
		"log.dirs":                                 logDir,
		"num.network.threads":                      "2",
		"num.io.threads":                           "2",
		"num.replica.fetchers":                     "1",
		"num.recovery.threads.per.data.dir":        "1",
		"background.threads":                       "2",
		"log.cleaner.threads":                      "1",
		"log.cleaner.dedupe.buffer.size":           strconv.Itoa(16 << 20),
		"group.initial.rebalance.delay.ms":         "0",
		"num.partitions":                           "1",
		"default.replication.factor":               strconv.Itoa(rf),
		"min.insync.replicas":                      strconv.Itoa(minISR),
		"unclean.leader.election.enable":           "false",
		"auto.create.topics.enable":                "false",
		"offsets.topic.replication.factor":         strconv.Itoa(rf),
		"offsets.topic.num.partitions":             "6",
		"transaction.state.log.replication.factor": strconv.Itoa(rf),
		"transaction.state.log.min.isr":            strconv.Itoa(minISR),
		"transaction.state.log.num.partitions":     "6",
	}
	maps.Copy(props, shareGroupProps(rf, minISR))
	maps.Copy(props, listeners)
	if sec != nil {
		maps.Copy(props, sec.brokerProps())
	}
	maps.Copy(props, extra)
	return props
}

// shareGroupProps are the broker settings of share groups (KIP-932),
// sized for tests. Kafka 4.2+ finalizes share.version when it formats the
// log directory (4.4.0 formats share.version=2: StorageTool
// version-mapping, and ApiVersions of a running node, say so), so share
// groups need no --feature flag and no group.coordinator.rebalance.protocols
// or unstable-API setting; what is set here:
//
//   - __share_group_state, where the share coordinator keeps each
//     share-partition's state, replicated like the offsets topic (rf,
//     min.insync.replicas) and with 6 partitions instead of 50 (50 × rf
//     replicas are slow to create on two cores);
//   - group.share.heartbeat.interval.ms 1 s instead of 5 s: a member gets
//     its assignment with a heartbeat, so this is most of the first
//     record's wait after a join (5.4 s → 3.4 s measured on one node);
//   - group.share.session.timeout.ms 10 s instead of 45 s: a member that
//     died (SIGKILL) keeps its assignment until its session expires (the
//     records it held are released when its connection closes);
//   - the minimums lowered (heartbeat 500 ms, session 3 s, record lock
//     1 s) so that a test may set shorter share.* configs on its group;
//     the record acquisition lock stays at Kafka's 30 s.
func shareGroupProps(rf, minISR int) map[string]string {
	return map[string]string{
		"share.coordinator.state.topic.replication.factor": strconv.Itoa(rf),
		"share.coordinator.state.topic.min.isr":            strconv.Itoa(minISR),
		"share.coordinator.state.topic.num.partitions":     "6",
		"group.share.heartbeat.interval.ms":                "1000",
		"group.share.min.heartbeat.interval.ms":            "500",
		"group.share.session.timeout.ms":                   "10000",
		"group.share.min.session.timeout.ms":               "3000",
		"group.share.min.record.lock.duration.ms":          "1000",
	}
}

// loopbackListeners are the listeners of node when every node shares the
// host's network (host processes, or containers with host networking): one
// PLAINTEXT listener for clients and replication and one CONTROLLER
// listener for the KRaft quorum, each on its own 127.0.0.1 port, and with
// [WithSecurity] a SASL_SSL listener for clients.
func loopbackListeners(node int, ports []nodePorts) map[string]string {
	voters := make([]string, len(ports))
	for i, p := range ports {
		voters[i] = fmt.Sprintf("%d@127.0.0.1:%d", i+1, p.controller)
	}
	me := ports[node-1]
	l := map[string]string{
		"controller.quorum.voters":       strings.Join(voters, ","),
		"listeners":                      fmt.Sprintf("PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d", me.broker, me.controller),
		"advertised.listeners":           fmt.Sprintf("PLAINTEXT://127.0.0.1:%d", me.broker),
		"controller.listener.names":      "CONTROLLER",
		"inter.broker.listener.name":     "PLAINTEXT",
		"listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
	}
	if me.secure != 0 {
		addSecureListener(l, fmt.Sprintf("127.0.0.1:%d", me.secure), fmt.Sprintf("127.0.0.1:%d", me.secure))
	}
	return l
}

// addSecureListener adds the SASL_SSL listener of [WithSecurity] to
// listener properties: bound at bind, advertised as adv.
func addSecureListener(l map[string]string, bind, adv string) {
	l["listeners"] += ",SASL_SSL://" + bind
	l["advertised.listeners"] += ",SASL_SSL://" + adv
	l["listener.security.protocol.map"] += ",SASL_SSL:SASL_SSL"
}

// Ports inside a node's container when the nodes share a container network,
// as in the official apache/kafka image's examples.
const (
	containerClientPort     = 9092  // CLIENT, mapped to a 127.0.0.1 port of the host
	containerInternalPort   = 19092 // INTERNAL: replication, reached by node alias
	containerControllerPort = 9093  // CONTROLLER: the KRaft quorum, by node alias
	containerSecurePort     = 9094  // SASL_SSL (WithSecurity), mapped to a 127.0.0.1 port of the host
)

// nodeAlias is node's name on the cluster's container network.
func nodeAlias(node int) string { return "kafka-" + strconv.Itoa(node) }

// containerListeners are the listeners of node when each node is a
// container on a network of its own cluster: CLIENT on port 9092 of the
// container, published on 127.0.0.1:hostPorts[node-1] of the host and
// advertised as that address, so that clients on the host reach every node;
// INTERNAL (replication) and CONTROLLER (the quorum) advertised under each
// node's alias on the network. A single node reaches itself on localhost
// and needs no name resolution. With [WithSecurity], SASL_SSL on port 9094
// of the container is published on 127.0.0.1:secureHostPorts[node-1] and
// advertised as that address.
func containerListeners(node int, hostPorts, secureHostPorts []int) map[string]string {
	host := func(n int) string {
		if len(hostPorts) == 1 {
			return "localhost"
		}
		return nodeAlias(n)
	}
	voters := make([]string, len(hostPorts))
	for i := range hostPorts {
		voters[i] = fmt.Sprintf("%d@%s:%d", i+1, host(i+1), containerControllerPort)
	}
	l := map[string]string{
		"controller.quorum.voters": strings.Join(voters, ","),
		"listeners": fmt.Sprintf("CLIENT://0.0.0.0:%d,INTERNAL://0.0.0.0:%d,CONTROLLER://0.0.0.0:%d",
			containerClientPort, containerInternalPort, containerControllerPort),
		"advertised.listeners": fmt.Sprintf("CLIENT://127.0.0.1:%d,INTERNAL://%s:%d",
			hostPorts[node-1], host(node), containerInternalPort),
		"controller.listener.names":      "CONTROLLER",
		"inter.broker.listener.name":     "INTERNAL",
		"listener.security.protocol.map": "CLIENT:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
	}
	if secureHostPorts != nil {
		addSecureListener(l, fmt.Sprintf("0.0.0.0:%d", containerSecurePort), fmt.Sprintf("127.0.0.1:%d", secureHostPorts[node-1]))
	}
	return l
}

// propsFile renders properties in Java's .properties format, sorted.
func propsFile(props map[string]string) string {
	keys := make([]string, 0, len(props))
	for k := range props {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, props[k])
	}
	return b.String()
}

// propsEnv renders properties as the official apache/kafka image reads them:
// KAFKA_ + the key in upper case, '.' as '_', '_' as '__', '-' as '___'.
func propsEnv(props map[string]string) map[string]string {
	env := make(map[string]string, len(props))
	for k, v := range props {
		name := strings.NewReplacer("-", "___", "_", "__", ".", "_").Replace(k)
		env["KAFKA_"+strings.ToUpper(name)] = v
	}
	return env
}

// newClusterID returns a random cluster ID as Kafka's
// StorageTool random-uuid prints it: 16 bytes, URL-safe base64, no padding,
// not starting with '-'.
func newClusterID() string {
	for {
		var b [16]byte
		_, _ = rand.Read(b[:])
		id := base64.RawURLEncoding.EncodeToString(b[:])
		if id[0] != '-' {
			return id
		}
	}
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. They are free
// when returned; another program could take one before Kafka binds it, which
// shows as a node that fails to start.
func freePorts(n int) ([]int, error) {
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("integration: find a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// allocPorts returns the ports of nodes nodes, with a SASL_SSL port each
// if secure.
func allocPorts(nodes int, secure bool) ([]nodePorts, error) {
	per := 2
	if secure {
		per = 3
	}
	ps, err := freePorts(per * nodes)
	if err != nil {
		return nil, err
	}
	out := make([]nodePorts, nodes)
	for i := range out {
		out[i] = nodePorts{broker: ps[per*i], controller: ps[per*i+1]}
		if secure {
			out[i].secure = ps[per*i+2]
		}
	}
	return out, nil
}

// log4j2Props is the broker's log4j2 configuration: INFO to stdout, with the
// chattiest loggers turned down.
const log4j2Props = `status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafkaconfig.name = org.apache.kafka.common.config
logger.kafkaconfig.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
`
