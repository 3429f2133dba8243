package integration

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kversion"
)

// Environment variables read by [New] and [Start].
const (
	// EnvBackend names the backend: external, container, process or kfake.
	EnvBackend = "KDELIVER_KAFKA_BACKEND"
	// EnvBrokers lists the brokers of an external cluster, comma separated.
	EnvBrokers = "KDELIVER_KAFKA_BROKERS"
	// EnvHome is the folder with Kafka's jars for the process backend.
	EnvHome = "KDELIVER_KAFKA_HOME"
	// EnvImage overrides [DefaultImage] for the container backend.
	EnvImage = "KDELIVER_KAFKA_IMAGE"
	// EnvNetwork chooses how the container backend connects its nodes:
	// mapped or host (see [ContainerNetwork]).
	EnvNetwork = "KDELIVER_KAFKA_NETWORK"
	// EnvRequire, set to 1 or true, turns a fall back to kfake into an error.
	EnvRequire = "KDELIVER_REQUIRE_KAFKA"
	// EnvKeep, set to 1 or true, keeps the process backend's folder (logs,
	// data) after Close and logs where it is.
	EnvKeep = "KDELIVER_KAFKA_KEEP"
)

// DefaultImage is the container image of the container backend.
const DefaultImage = "apache/kafka:4.4.0"

// Backend names where a [Cluster]'s nodes run.
type Backend string

// The backends; see the package documentation for how one is chosen.
const (
	BackendExternal  Backend = "external"
	BackendContainer Backend = "container"
	BackendProcess   Backend = "process"
	BackendKfake     Backend = "kfake"
)

var (
	// ErrKafkaRequired is returned by [New] when KDELIVER_REQUIRE_KAFKA is
	// set but only kfake could be used. Set up a real backend (see the
	// package documentation) or unset the variable.
	ErrKafkaRequired = errors.New("integration: real Kafka required (" + EnvRequire + " is set) but only kfake is available")

	// ErrUnsupported is returned by node operations that the cluster's
	// backend cannot do, such as killing a node of an external cluster or
	// pausing a kfake node.
	ErrUnsupported = errors.New("integration: operation not supported by this backend")
)

// Option configures [New] and [Start].
type Option func(*config)

type config struct {
	nodes        int
	backend      Backend
	image        string
	network      ContainerNetwork
	home         string
	brokerConfig map[string]string
	startTimeout time.Duration
	logf         func(format string, args ...any)
	security     bool            // WithSecurity
	sec          *securityConfig // made by New when security is set
}

func defaultConfig() config {
	return config{
		nodes:        1,
		startTimeout: 3 * time.Minute,
		brokerConfig: map[string]string{},
		logf:         log.New(os.Stderr, "", log.LstdFlags).Printf,
	}
}

// WithNodes sets the number of nodes, overriding the default 1. Three nodes
// give replication factor 3 and min.insync.replicas 2; an external cluster
// must have at least n brokers.
func WithNodes(n int) Option { return func(c *config) { c.nodes = n } }

// WithBackend chooses the backend, overriding KDELIVER_KAFKA_BACKEND and the
// automatic choice.
func WithBackend(b Backend) Option { return func(c *config) { c.backend = b } }

// WithImage sets the container backend's image, overriding
// KDELIVER_KAFKA_IMAGE and [DefaultImage]. The image must follow the official
// apache/kafka image's conventions: KAFKA_* environment variables become
// broker properties, CLUSTER_ID formats the log directory.
func WithImage(ref string) Option { return func(c *config) { c.image = ref } }

// ContainerNetwork is how the container backend connects its nodes to each
// other and to the test.
type ContainerNetwork string

const (
	// NetworkMapped puts the nodes on a container network of their own
	// (created and removed by the harness), where they reach each other
	// by alias (kafka-1, kafka-2, ...) for the KRaft quorum and
	// replication, and publishes each node's client listener on a free
	// 127.0.0.1 port of the host, which the node advertises. It runs
	// wherever Docker or podman runs (Docker Desktop, rootless podman),
	// but a cluster of several nodes needs name resolution on the
	// network: podman's CNI network backend has it only with the dnsname
	// plugin. The default: without WithContainerNetwork or
	// KDELIVER_KAFKA_NETWORK, a cluster whose network cannot be created
	// or cannot resolve the aliases falls back to [NetworkHost], and the
	// harness logs why.
	NetworkMapped ContainerNetwork = "mapped"
	// NetworkHost runs every node on the host's network, on its own
	// 127.0.0.1 ports. It needs Linux (Docker Desktop supports host
	// networking only with its setting turned on).
	NetworkHost ContainerNetwork = "host"
)

// WithContainerNetwork chooses how the container backend connects its
// nodes, overriding KDELIVER_KAFKA_NETWORK and the default (mapped ports,
// falling back to host networking where the nodes cannot resolve each
// other). Chosen explicitly, mapped fails instead of falling back.
func WithContainerNetwork(n ContainerNetwork) Option { return func(c *config) { c.network = n } }

// WithKafkaHome sets the process backend's folder of Kafka jars (directly or
// in libs/), overriding KDELIVER_KAFKA_HOME and the newest
// ~/.cache/kdeliver/kafka-*.
func WithKafkaHome(dir string) Option { return func(c *config) { c.home = dir } }

// WithBrokerConfig sets a broker property on every node (for example
// "transaction.abort.timed.out.transaction.cleanup.interval.ms"), overriding
// the harness's value for that key. kfake and external clusters ignore it.
func WithBrokerConfig(key, value string) Option {
	return func(c *config) { c.brokerConfig[key] = value }
}

// WithStartTimeout bounds the start of the cluster, overriding the default 3
// minutes.
func WithStartTimeout(d time.Duration) Option { return func(c *config) { c.startTimeout = d } }

// WithLogf sends the harness's notices to fn, overriding the default (the
// standard logger on stderr; [Start] uses t.Logf).
func WithLogf(fn func(format string, args ...any)) Option {
	return func(c *config) { c.logf = fn }
}

// nodeBackend is what each backend implements. Nodes are numbered from 1.
type nodeBackend interface {
	// addrs returns the broker address of every node, node 1 first.
	addrs() []string
	// brokerIDs returns Kafka's broker ID of every node, node 1 first.
	brokerIDs() []int32
	version(ctx context.Context) (string, error)
	// start starts a node that is down, on its old ports and data.
	start(ctx context.Context, node int) error
	// exited returns a non-nil error if a node that was started is down.
	exited(ctx context.Context, node int) error
	stop(ctx context.Context, node int) error
	kill(ctx context.Context, node int) error
	pause(ctx context.Context, node int) error
	resume(ctx context.Context, node int) error
	close(ctx context.Context) error
	// logTail returns the last lines a node printed, for failure reports.
	logTail(node, lines int) string
}

// Cluster is a running Kafka cluster. Create it with [Start] or [New].
type Cluster struct {
	cfg     config
	kind    Backend
	be      nodeBackend
	brokers []string
	ids     []int32
	rf      int16
	version string

	adm *kadm.Client
	cl  *kgo.Client
	sec *Security // WithSecurity

	mu      sync.Mutex
	down    map[int]bool // nodes stopped or killed
	closed  bool
	closeMu sync.Mutex
}

// Start is [New] for tests: it starts a cluster, bounded by the start
// timeout, registers [Cluster.Close] with tb.Cleanup, and calls tb.Fatal if
// the cluster cannot start (also when KDELIVER_REQUIRE_KAFKA is set and only
// kfake is available). Notices go to tb.Logf. When the test fails, the
// cleanup logs the last lines of every node's log.
func Start(tb testing.TB, opts ...Option) *Cluster {
	tb.Helper()
	opts = append([]Option{WithLogf(tb.Logf)}, opts...)
	ctx := context.Background()
	if d, ok := deadline(tb); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d)
		defer cancel()
	}
	c, err := New(ctx, opts...)
	if err != nil {
		tb.Fatalf("integration: start Kafka: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			c.LogTails(tb.Logf, 40)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			tb.Errorf("integration: close Kafka: %v", err)
		}
	})
	return c
}

func deadline(tb testing.TB) (time.Time, bool) {
	if t, ok := tb.(interface{ Deadline() (time.Time, bool) }); ok {
		return t.Deadline()
	}
	return time.Time{}, false
}

// New starts a cluster (or connects to an external one) and waits until
// every node serves, bounded by ctx and the start timeout ([WithStartTimeout]).
// The caller must call [Cluster.Close].
func New(ctx context.Context, opts ...Option) (*Cluster, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.nodes < 1 {
		return nil, fmt.Errorf("integration: WithNodes(%d): need at least 1 node", cfg.nodes)
	}
	kind, err := chooseBackend(ctx, &cfg)
	if err != nil {
		return nil, err
	}
	if cfg.security {
		if kind != BackendProcess && kind != BackendContainer {
			return nil, fmt.Errorf("%w: WithSecurity needs the process or container backend, not %s", ErrUnsupported, kind)
		}
		if cfg.sec, err = newSecurityConfig(); err != nil {
			return nil, fmt.Errorf("integration: certificates: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.startTimeout)
	defer cancel()

	c := &Cluster{
		cfg:  cfg,
		kind: kind,
		rf:   int16(min(3, cfg.nodes)),
		down: map[int]bool{},
	}
	began := time.Now()
	switch kind {
	case BackendExternal:
		c.be, err = newExternal(ctx, &cfg)
	case BackendProcess:
		c.be, err = newProcess(ctx, &cfg)
	case BackendContainer:
		c.be, err = newContainer(ctx, &cfg)
	case BackendKfake:
		c.be, err = newKfake(&cfg)
	default:
		err = fmt.Errorf("integration: unknown backend %q (want external, container, process or kfake)", kind)
	}
	if err != nil {
		return nil, err
	}
	c.brokers = c.be.addrs()
	c.ids = c.be.brokerIDs()
	if kind == BackendExternal {
		c.rf = int16(min(3, len(c.ids)))
	}
	// kadm's Metadata answers from kgo's cache while it is younger than
	// MetadataMinAge (5 s by default): a topic just created, cached
	// without leaders, would look so for 5 s to the waits below.
	c.cl, err = kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.DialTimeout(3*time.Second), kgo.MetadataMinAge(100*time.Millisecond))
	if err != nil {
		_ = c.be.close(context.Background())
		return nil, fmt.Errorf("integration: admin client: %w", err)
	}
	c.adm = kadm.NewClient(c.cl)

	fail := func(err error) (*Cluster, error) {
		c.LogTails(cfg.logf, 40)
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		_ = c.Close(cctx)
		return nil, err
	}
	if kind != BackendExternal {
		for n := 1; n <= len(c.ids); n++ {
			if err := c.be.start(ctx, n); err != nil {
				return fail(fmt.Errorf("integration: start node %d: %w", n, err))
			}
		}
	}
	if err := c.waitReady(ctx, c.nodeList()...); err != nil {
		return fail(err)
	}
	if cfg.security {
		if err := c.setUpSecurity(ctx); err != nil {
			return fail(err)
		}
	}
	c.version, err = c.be.version(ctx)
	if err != nil || c.version == "" {
		c.version = c.guessVersion(ctx)
	}
	secure := ""
	if c.sec != nil {
		secure = ", SASL_SSL at " + strings.Join(c.sec.brokers, ",")
	}
	cfg.logf("integration: Kafka %s on %s backend, %d node(s) at %s%s, ready in %s",
		c.version, kind, len(c.ids), strings.Join(c.brokers, ","), secure, time.Since(began).Round(time.Millisecond))
	return c, nil
}

func envTrue(name string) bool {
	switch strings.ToLower(strings.TrimSpace(os.Getenv(name))) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

func chooseBackend(ctx context.Context, cfg *config) (Backend, error) {
	kind := cfg.backend
	if kind == "" {
		kind = Backend(strings.ToLower(strings.TrimSpace(os.Getenv(EnvBackend))))
	}
	if kind == "" {
		switch {
		case os.Getenv(EnvBrokers) != "":
			kind = BackendExternal
		case cfg.home != "" || os.Getenv(EnvHome) != "":
			kind = BackendProcess
		case dockerAnswers(ctx):
			kind = BackendContainer
		default:
			kind = BackendKfake
			if envTrue(EnvRequire) {
				return "", fmt.Errorf("%w: set %s, %s or %s, or make a Docker API answer",
					ErrKafkaRequired, EnvBrokers, EnvHome, EnvBackend)
			}
			cfg.logf("integration: NOTICE: no real Kafka found (%s, %s unset, no Docker API); using kfake, "+
				"which keeps no replicas: durability and fencing results from it prove nothing",
				EnvBrokers, EnvHome)
		}
	}
	if kind == BackendKfake && envTrue(EnvRequire) {
		return "", fmt.Errorf("%w: backend kfake was chosen explicitly", ErrKafkaRequired)
	}
	return kind, nil
}

func (c *Cluster) nodeList() []int {
	ns := make([]int, len(c.ids))
	for i := range ns {
		ns[i] = i + 1
	}
	return ns
}

// Brokers returns the address of every node's broker listener (host:port),
// node 1 first.
func (c *Cluster) Brokers() []string { return slices.Clone(c.brokers) }

// Nodes returns the number of nodes.
func (c *Cluster) Nodes() int { return len(c.ids) }

// Kind returns the backend the cluster runs on.
func (c *Cluster) Kind() Backend { return c.kind }

// ContainerNetwork returns how the nodes of a container cluster are
// connected ([NetworkMapped] or [NetworkHost], after any fall back), or ""
// for the other backends.
func (c *Cluster) ContainerNetwork() ContainerNetwork {
	if b, ok := c.be.(*containerBackend); ok {
		return b.mode
	}
	return ""
}

// Version returns the Kafka version: from the jars or image for the process
// and container backends, else a guess from the brokers' API versions (for
// example "at least v4.0"), or "kfake".
func (c *Cluster) Version() string { return c.version }

// ReplicationFactor returns the replication factor that [Cluster.CreateTopic]
// uses: 3 for three nodes or more, else the number of nodes.
func (c *Cluster) ReplicationFactor() int { return int(c.rf) }

// Admin returns an admin client seeded with every node. It is closed by
// [Cluster.Close]; do not close it.
func (c *Cluster) Admin() *kadm.Client { return c.adm }

// NewClient returns a new franz-go client seeded with every node, then opts.
// The caller closes it.
func (c *Cluster) NewClient(opts ...kgo.Opt) (*kgo.Client, error) {
	return kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.brokers...)}, opts...)...)
}

// Client is [Cluster.NewClient] for tests: it calls tb.Fatal on error and
// closes the client in tb.Cleanup.
func (c *Cluster) Client(tb testing.TB, opts ...kgo.Opt) *kgo.Client {
	tb.Helper()
	cl, err := c.NewClient(opts...)
	if err != nil {
		tb.Fatalf("integration: client: %v", err)
	}
	tb.Cleanup(cl.Close)
	return cl
}

// Env returns environment variables (KEY=VALUE) that make [New] in another
// process, such as a [StartHelper] process, connect to this cluster as an
// external one.
func (c *Cluster) Env() []string {
	return []string{
		EnvBrokers + "=" + strings.Join(c.brokers, ","),
		EnvBackend + "=" + string(BackendExternal),
	}
}

// RequireReal stops a test that needs real Kafka when the cluster is kfake:
// with tb.Fatal when KDELIVER_REQUIRE_KAFKA is set, else with tb.Skip.
func (c *Cluster) RequireReal(tb testing.TB) {
	tb.Helper()
	if c.kind != BackendKfake {
		return
	}
	if envTrue(EnvRequire) {
		tb.Fatalf("integration: test needs real Kafka, cluster is kfake (%s is set)", EnvRequire)
	}
	tb.Skip("integration: test needs real Kafka; cluster is kfake")
}

func (c *Cluster) checkNode(node int) error {
	if node < 1 || node > len(c.ids) {
		return fmt.Errorf("integration: node %d out of range 1..%d", node, len(c.ids))
	}
	return nil
}

// Stop stops a node cleanly (SIGTERM, controlled shutdown) and waits until
// it exits, bounded by ctx; when ctx ends first the node is killed and the
// error wraps ctx's.
func (c *Cluster) Stop(ctx context.Context, node int) error {
	if err := c.checkNode(node); err != nil {
		return err
	}
	if err := c.be.stop(ctx, node); err != nil {
		return fmt.Errorf("integration: stop node %d: %w", node, err)
	}
	c.setDown(node, true)
	return nil
}

// Kill kills a node with SIGKILL (a crash: no controlled shutdown, nothing
// flushed) and waits until it is gone, at most 30 seconds.
func (c *Cluster) Kill(node int) error {
	if err := c.checkNode(node); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.be.kill(ctx, node); err != nil {
		return fmt.Errorf("integration: kill node %d: %w", node, err)
	}
	c.setDown(node, true)
	return nil
}

// Pause freezes a node (SIGSTOP, or pausing its container): its sockets stay
// open but it answers nothing, like a long GC pause or a hung host.
func (c *Cluster) Pause(node int) error {
	if err := c.checkNode(node); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.be.pause(ctx, node); err != nil {
		return fmt.Errorf("integration: pause node %d: %w", node, err)
	}
	return nil
}

// Resume continues a node frozen by [Cluster.Pause].
func (c *Cluster) Resume(node int) error {
	if err := c.checkNode(node); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.be.resume(ctx, node); err != nil {
		return fmt.Errorf("integration: resume node %d: %w", node, err)
	}
	return nil
}

// Restart starts a node again on the same ports and log directory, killing
// it first (SIGKILL) if it is still running, and waits until it serves
// (it answers and is registered, not fenced), bounded by ctx. After a
// restart the node's replicas may still be catching up: see
// [Cluster.WaitInSync].
func (c *Cluster) Restart(ctx context.Context, node int) error {
	if err := c.checkNode(node); err != nil {
		return err
	}
	c.mu.Lock()
	isDown := c.down[node]
	c.mu.Unlock()
	if !isDown {
		kctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.be.kill(kctx, node)
		cancel()
		if err != nil {
			return fmt.Errorf("integration: restart node %d: kill: %w", node, err)
		}
		c.setDown(node, true)
	}
	if err := c.be.start(ctx, node); err != nil {
		return fmt.Errorf("integration: restart node %d: %w", node, err)
	}
	c.setDown(node, false)
	return c.waitReady(ctx, node)
}

func (c *Cluster) setDown(node int, down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if down {
		c.down[node] = true
	} else {
		delete(c.down, node)
	}
}

// nodeOf maps a Kafka broker ID to a node number, or -1.
func (c *Cluster) nodeOf(id int32) int {
	if i := slices.Index(c.ids, id); i >= 0 {
		return i + 1
	}
	return -1
}

// attempt bounds one request, so that a paused node (which accepts
// connections but answers nothing) cannot stall a wait loop.
func attempt(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 5*time.Second)
}

// poll calls fn every interval until it returns done or an error, or ctx
// ends; then the error wraps ctx's error and the last state fn reported.
func poll(ctx context.Context, interval time.Duration, what string, fn func(ctx context.Context) (done bool, state string, err error)) error {
	var last string
	for {
		actx, cancel := attempt(ctx)
		done, state, err := fn(actx)
		cancel()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if state != "" {
			last = state
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("integration: %s: %w (last: %s)", what, ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

// waitReady waits until each node answers a metadata request itself and
// lists itself among the live brokers.
func (c *Cluster) waitReady(ctx context.Context, nodes ...int) error {
	for _, n := range nodes {
		addr, id := c.brokers[n-1], c.ids[n-1]
		err := poll(ctx, 250*time.Millisecond, fmt.Sprintf("wait for node %d (%s)", n, addr), func(ctx context.Context) (bool, string, error) {
			if err := c.be.exited(ctx, n); err != nil {
				return false, "", fmt.Errorf("integration: node %d is down: %w\n%s", n, err, c.be.logTail(n, 30))
			}
			cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.DialTimeout(2*time.Second), kgo.RequestRetries(0))
			if err != nil {
				return false, "", err
			}
			defer cl.Close()
			m, err := kadm.NewClient(cl).BrokerMetadata(ctx)
			if err != nil {
				return false, err.Error(), nil
			}
			if !slices.Contains(m.Brokers.NodeIDs(), id) {
				return false, fmt.Sprintf("node %d lists brokers %v", n, m.Brokers.NodeIDs()), nil
			}
			return true, "", nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) guessVersion(ctx context.Context) string {
	if c.kind == BackendKfake {
		return "kfake"
	}
	actx, cancel := attempt(ctx)
	defer cancel()
	vs, err := c.adm.ApiVersions(actx)
	if err != nil {
		return "unknown"
	}
	for _, v := range vs.Sorted() {
		if v.Err == nil && v.Raw() != nil {
			return kversion.FromApiVersionsResponse(v.Raw()).VersionGuess()
		}
	}
	return "unknown"
}

// Leader returns the node that leads a partition, waiting while the
// partition has no leader, bounded by ctx. Right after a node dies, metadata
// may still name it until the controller notices (broker.session.timeout.ms,
// 9 s by default): use [Cluster.WaitNewLeader] to wait for the change.
func (c *Cluster) Leader(ctx context.Context, topic string, partition int32) (int, error) {
	return c.WaitNewLeader(ctx, topic, partition, -1)
}

// WaitNewLeader waits until a partition has a leader other than node old
// (old -1: any leader) and returns it, bounded by ctx.
func (c *Cluster) WaitNewLeader(ctx context.Context, topic string, partition int32, old int) (int, error) {
	leader := -1
	err := poll(ctx, 200*time.Millisecond, fmt.Sprintf("leader of %s/%d", topic, partition), func(ctx context.Context) (bool, string, error) {
		m, err := c.adm.Metadata(ctx, topic)
		if err != nil {
			return false, err.Error(), nil
		}
		td, ok := m.Topics[topic]
		if !ok || td.Err != nil {
			return false, fmt.Sprintf("topic: %v", td.Err), nil
		}
		pd, ok := td.Partitions[partition]
		if !ok {
			return false, "no such partition", nil
		}
		if pd.Leader < 0 {
			return false, "no leader", nil
		}
		leader = c.nodeOf(pd.Leader)
		if leader == old {
			return false, fmt.Sprintf("leader still node %d", old), nil
		}
		return true, "", nil
	})
	if err != nil {
		return -1, err
	}
	return leader, nil
}

// WaitInSync waits until every node is registered and no partition of any
// topic (internal ones included) is under-replicated or leaderless, bounded
// by ctx.
func (c *Cluster) WaitInSync(ctx context.Context) error {
	return poll(ctx, 250*time.Millisecond, "wait in sync", func(ctx context.Context) (bool, string, error) {
		m, err := c.adm.Metadata(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		live := m.Brokers.NodeIDs()
		for _, id := range c.ids {
			if !slices.Contains(live, id) {
				return false, fmt.Sprintf("node %d not registered (live: %v)", c.nodeOf(id), live), nil
			}
		}
		if c.kind == BackendKfake {
			return true, "", nil // kfake keeps no replicas
		}
		for _, t := range m.Topics.Sorted() {
			if t.Err != nil {
				return false, fmt.Sprintf("%s: %v", t.Topic, t.Err), nil
			}
			for _, p := range t.Partitions.Sorted() {
				if p.Leader < 0 || len(p.ISR) < len(p.Replicas) {
					return false, fmt.Sprintf("%s/%d leader %d replicas %v isr %v", t.Topic, p.Partition, p.Leader, p.Replicas, p.ISR), nil
				}
			}
		}
		return true, "", nil
	})
}

// CreateTopic creates a topic with the cluster's replication factor and
// waits until every partition has a leader and a full ISR, bounded by ctx.
func (c *Cluster) CreateTopic(ctx context.Context, name string, partitions int) error {
	return c.CreateTopicWithConfigs(ctx, name, partitions, nil)
}

// CreateTopicWithConfigs is [Cluster.CreateTopic] with topic configs (for
// example "min.insync.replicas" or "cleanup.policy").
func (c *Cluster) CreateTopicWithConfigs(ctx context.Context, name string, partitions int, configs map[string]string) error {
	var cfgs map[string]*string
	for k, v := range configs {
		if cfgs == nil {
			cfgs = map[string]*string{}
		}
		cfgs[k] = kadm.StringPtr(v)
	}
	// An attempt that timed out may still have created the topic: after
	// one, TopicAlreadyExists counts as success.
	retried := false
	err := poll(ctx, 250*time.Millisecond, "create topic "+name, func(ctx context.Context) (bool, string, error) {
		_, err := c.adm.CreateTopic(ctx, int32(partitions), c.rf, cfgs, name)
		switch {
		case err == nil, retried && errors.Is(err, kerr.TopicAlreadyExists):
			return true, "", nil
		case isRetriable(err):
			retried = true
			return false, err.Error(), nil
		default:
			return false, "", fmt.Errorf("integration: create topic %s: %w", name, err)
		}
	})
	if err != nil {
		return err
	}
	return poll(ctx, 100*time.Millisecond, "topic "+name+" ready", func(ctx context.Context) (bool, string, error) {
		m, err := c.adm.Metadata(ctx, name)
		if err != nil {
			return false, err.Error(), nil
		}
		td := m.Topics[name]
		if td.Err != nil || len(td.Partitions) != partitions {
			return false, fmt.Sprintf("%d partitions, err %v", len(td.Partitions), td.Err), nil
		}
		for _, p := range td.Partitions {
			if p.Leader < 0 || (c.kind != BackendKfake && len(p.ISR) < int(c.rf)) {
				return false, fmt.Sprintf("partition %d leader %d isr %v", p.Partition, p.Leader, p.ISR), nil
			}
		}
		return true, "", nil
	})
}

// isRetriable reports whether a request may succeed when tried again:
// Kafka's retriable errors, and transport errors (a node restarting, one
// attempt timing out).
func isRetriable(err error) bool {
	var ke *kerr.Error
	if errors.As(err, &ke) {
		return ke.Retriable
	}
	return true
}

// LogTails sends the last lines of every node's log to logf.
func (c *Cluster) LogTails(logf func(format string, args ...any), lines int) {
	if c.be == nil {
		return
	}
	for n := 1; n <= len(c.ids); n++ {
		if t := c.be.logTail(n, lines); t != "" {
			logf("integration: last lines of node %d:\n%s", n, t)
		}
	}
}

// Close stops every node (SIGKILL: data is thrown away, no clean shutdown
// is needed), removes temporary folders and closes the admin client. It is
// safe to call twice; the second call does nothing.
func (c *Cluster) Close(ctx context.Context) error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.sec.close()
	if c.cl != nil {
		c.cl.Close()
	}
	if c.be == nil {
		return nil
	}
	return c.be.close(ctx)
}
