package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	mnetwork "github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
)

// containerLogDir is the log directory inside the container: writable by the
// official image's user, and kept in the container's own layer, so that a
// killed container started again finds its data.
const containerLogDir = "/tmp/kraft-combined-logs"

// containerLabel marks the containers and the network of a container
// cluster (value: the cluster's name), so that leftovers of a killed test
// run can be found and removed.
const containerLabel = "org.kdeliver.integration.cluster"

// containerBackend runs every node as a container (testcontainers-go). With
// [NetworkMapped] the nodes share a network of their own and each node's
// client listener is published on a 127.0.0.1 port of the host; with
// [NetworkHost] they run on the host's network, each on its own 127.0.0.1
// ports. Kill is a container kill (SIGKILL), Pause a container pause
// (cgroup freezer), Restart starts the same container again: same ports,
// same alias, same data.
type containerBackend struct {
	cfg       *config
	image     string
	cli       *testcontainers.DockerClient
	clusterID string
	name      string
	mode      ContainerNetwork
	nw        *testcontainers.DockerNetwork // NetworkMapped: the cluster's network
	hostPorts []int                         // NetworkMapped: each node's client port on 127.0.0.1
	secPorts  []int                         // NetworkMapped with WithSecurity: each node's SASL_SSL port on 127.0.0.1
	ports     []nodePorts                   // NetworkHost: each node's ports on 127.0.0.1
	env       []map[string]string

	mu   sync.Mutex
	ctrs []*testcontainers.DockerContainer
}

// dockerAnswers reports whether a Docker API (Docker, or podman's
// compatible service) answers within a few seconds.
func dockerAnswers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cli, err := newDockerClient(ctx)
	if err != nil {
		return false
	}
	defer cli.Close()
	_, err = cli.Ping(ctx, client.PingOptions{})
	return err == nil
}

func newDockerClient(ctx context.Context) (cli *testcontainers.DockerClient, err error) {
	// testcontainers panics in some set-ups without a Docker socket; a
	// panic here means no Docker.
	defer func() {
		if r := recover(); r != nil {
			cli, err = nil, fmt.Errorf("docker client: %v", r)
		}
	}()
	return testcontainers.NewDockerClientWithOpts(ctx)
}

func newContainer(ctx context.Context, cfg *config) (nodeBackend, error) {
	image := cfg.image
	if image == "" {
		image = os.Getenv(EnvImage)
	}
	if image == "" {
		image = DefaultImage
	}
	mode, chosen := cfg.network, true
	if mode == "" {
		mode = ContainerNetwork(strings.ToLower(strings.TrimSpace(os.Getenv(EnvNetwork))))
	}
	if mode == "" {
		mode, chosen = NetworkMapped, false
	}
	if mode != NetworkMapped && mode != NetworkHost {
		return nil, fmt.Errorf("integration: container network %q (%s): want %s or %s", mode, EnvNetwork, NetworkMapped, NetworkHost)
	}
	cli, err := newDockerClient(ctx)
	if err != nil {
		return nil, fmt.Errorf("integration: container backend: %w", err)
	}
	b := &containerBackend{
		cfg:       cfg,
		image:     image,
		cli:       cli,
		clusterID: newClusterID(),
		name:      "kdeliver-kafka-" + strings.ToLower(strings.NewReplacer("_", "x", "-", "x").Replace(newClusterID()[:8])),
		mode:      mode,
		ctrs:      make([]*testcontainers.DockerContainer, cfg.nodes),
	}
	fail := func(err error) (nodeBackend, error) {
		_ = b.close(context.Background())
		return nil, err
	}
	if mode == NetworkMapped {
		if err := b.setUpNetwork(ctx); err != nil {
			if chosen || ctx.Err() != nil {
				return fail(fmt.Errorf("integration: container network %s: %w", NetworkMapped, err))
			}
			cfg.logf("integration: NOTICE: containers use the host's network, not a network of their own with mapped ports: %v", err)
			b.mode = NetworkHost
		}
	}
	if b.mode == NetworkMapped {
		ps, err := freePorts(2 * cfg.nodes)
		if err != nil {
			return fail(err)
		}
		b.hostPorts = ps[:cfg.nodes]
		if cfg.sec != nil {
			b.secPorts = ps[cfg.nodes:]
		}
		cfg.logf("integration: containers on network %s (aliases %s), client ports mapped to 127.0.0.1:%v",
			b.nw.Name, aliases(cfg.nodes), b.hostPorts)
	} else if b.ports, err = allocPorts(cfg.nodes, cfg.sec != nil); err != nil {
		return fail(err)
	}
	for n := 1; n <= cfg.nodes; n++ {
		var listeners map[string]string
		if b.mode == NetworkMapped {
			listeners = containerListeners(n, b.hostPorts, b.secPorts)
		} else {
			listeners = loopbackListeners(n, b.ports)
		}
		env := propsEnv(brokerProps(n, cfg.nodes, listeners, cfg.sec, containerLogDir, cfg.brokerConfig))
		env["CLUSTER_ID"] = b.clusterID
		env["KAFKA_HEAP_OPTS"] = "-Xms512m -Xmx512m"
		if b.mode == NetworkMapped {
			// A restarted node may come back at another address: look
			// names up again within a second, and do not remember that
			// a stopped node's name did not resolve.
			env["KAFKA_OPTS"] = "-Dsun.net.inetaddr.ttl=1 -Dsun.net.inetaddr.negative.ttl=0"
		}
		b.env = append(b.env, env)
	}
	return b, nil
}

// aliases describes the node aliases for a log line.
func aliases(nodes int) string {
	if nodes == 1 {
		return "none: one node, on localhost"
	}
	return nodeAlias(1) + " to " + nodeAlias(nodes)
}

// setUpNetwork creates the cluster's network and, for more than one node,
// checks that containers on it resolve each other's aliases. Its errors say
// why [NetworkMapped] cannot be used.
func (b *containerBackend) setUpNetwork(ctx context.Context) error {
	nw, err := network.New(ctx, network.WithLabels(map[string]string{containerLabel: b.name}))
	if err != nil {
		return fmt.Errorf("cannot create a container network: %w", err)
	}
	b.nw = nw
	if b.cfg.nodes == 1 {
		return nil // a single node reaches itself on localhost
	}
	if err := b.probeNames(ctx); err != nil {
		rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = nw.Remove(rctx)
		b.nw = nil
		return err
	}
	return nil
}

// probeAlias is the alias of the probe container; probeCmd looks it up
// with getent (glibc, or musl-utils on Alpine), else busybox's nslookup.
const (
	probeAlias = "kdeliver-probe"
	probeCmd   = "if command -v getent >/dev/null 2>&1; then getent hosts " + probeAlias +
		"; else nslookup " + probeAlias + "; fi"
)

// probeNames runs a short container of the image on the cluster's network,
// under an alias, that looks its own alias up: the nodes find each other by
// alias, which needs the network's DNS (Docker's embedded DNS, podman's
// aardvark-dns with netavark, or the dnsname plugin with CNI).
func (b *containerBackend) probeNames(ctx context.Context) error {
	port, err := freePorts(1)
	if err != nil {
		return err
	}
	c, err := testcontainers.Run(ctx, b.image,
		testcontainers.WithLogger(logfLogger(b.cfg.logf)),
		testcontainers.WithName(b.name+"-probe"),
		testcontainers.WithLabels(map[string]string{containerLabel: b.name}),
		network.WithNetwork([]string{probeAlias}, b.nw),
		// Bind what the image exposes to loopback, or testcontainers
		// publishes it on every interface.
		b.clientPort(port[0], 0),
		testcontainers.WithCmd("sh", "-c", probeCmd),
		testcontainers.WithWaitStrategy(wait.ForExit().WithExitTimeout(time.Minute)),
	)
	if c != nil {
		defer func() {
			tctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = c.Terminate(tctx, testcontainers.StopTimeout(0))
		}()
	}
	if err != nil {
		return fmt.Errorf("cannot run a probe container of %s on network %s: %w", b.image, b.nw.Name, err)
	}
	st, err := c.State(ctx)
	if err != nil {
		return fmt.Errorf("probe container on network %s: %w", b.nw.Name, err)
	}
	if st.ExitCode != 0 {
		var out string
		if rc, err := c.Logs(ctx); err == nil {
			data, _ := io.ReadAll(rc)
			rc.Close()
			out = strings.Join(strings.Fields(tail(string(data), 3)), " ")
		}
		if out != "" {
			out = ": " + out
		}
		return fmt.Errorf("containers on network %s cannot resolve each other's aliases (looking up %s exited %d%s): "+
			"the network has no DNS; podman's CNI network backend has it with the dnsname plugin "+
			"(Debian: golang-github-containernetworking-plugin-dnsname), its netavark backend with aardvark-dns",
			b.nw.Name, probeAlias, st.ExitCode, out)
	}
	return nil
}

// clientPort publishes the container's client port on 127.0.0.1:hostPort
// and, if secureHostPort is not 0, its SASL_SSL port on
// 127.0.0.1:secureHostPort.
func (b *containerBackend) clientPort(hostPort, secureHostPort int) testcontainers.CustomizeRequestOption {
	lo := netip.MustParseAddr("127.0.0.1")
	p := mnetwork.MustParsePort(strconv.Itoa(containerClientPort) + "/tcp")
	ports := []string{p.String()}
	bind := mnetwork.PortMap{p: {{HostIP: lo, HostPort: strconv.Itoa(hostPort)}}}
	if secureHostPort != 0 {
		sp := mnetwork.MustParsePort(strconv.Itoa(containerSecurePort) + "/tcp")
		ports = append(ports, sp.String())
		bind[sp] = []mnetwork.PortBinding{{HostIP: lo, HostPort: strconv.Itoa(secureHostPort)}}
	}
	return func(req *testcontainers.GenericContainerRequest) error {
		if err := testcontainers.WithExposedPorts(ports...)(req); err != nil {
			return err
		}
		return testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.PortBindings = bind
		})(req)
	}
}

func (b *containerBackend) addrs() []string {
	if b.mode == NetworkMapped {
		out := make([]string, len(b.hostPorts))
		for i, p := range b.hostPorts {
			out[i] = fmt.Sprintf("127.0.0.1:%d", p)
		}
		return out
	}
	out := make([]string, len(b.ports))
	for i, p := range b.ports {
		out[i] = fmt.Sprintf("127.0.0.1:%d", p.broker)
	}
	return out
}

func (b *containerBackend) secureAddrs() []string {
	ports := b.secPorts
	if b.mode != NetworkMapped {
		ports = make([]int, len(b.ports))
		for i, p := range b.ports {
			ports[i] = p.secure
		}
	}
	out := make([]string, len(ports))
	for i, p := range ports {
		out[i] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	return out
}

// formatsScram is false: the image formats the log directory itself, with
// no way to add SCRAM credentials, so the harness creates the admin's
// through the PLAINTEXT listener.
func (b *containerBackend) formatsScram() bool { return false }

func (b *containerBackend) brokerIDs() []int32 {
	ids := make([]int32, b.cfg.nodes)
	for i := range ids {
		ids[i] = int32(i + 1)
	}
	return ids
}

func (b *containerBackend) ctr(node int) *testcontainers.DockerContainer {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ctrs[node-1]
}

func (b *containerBackend) start(ctx context.Context, node int) error {
	if c := b.ctr(node); c != nil {
		_, err := b.cli.ContainerStart(ctx, c.GetContainerID(), client.ContainerStartOptions{})
		return err
	}
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithLogger(logfLogger(b.cfg.logf)),
		testcontainers.WithName(fmt.Sprintf("%s-%d", b.name, node)),
		testcontainers.WithLabels(map[string]string{containerLabel: b.name}),
		testcontainers.WithEnv(maps.Clone(b.env[node-1])),
	}
	if b.mode == NetworkMapped {
		secure := 0
		if b.secPorts != nil {
			secure = b.secPorts[node-1]
		}
		opts = append(opts, network.WithNetwork([]string{nodeAlias(node)}, b.nw), b.clientPort(b.hostPorts[node-1], secure))
	} else {
		opts = append(opts, testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.NetworkMode = "host"
		}))
	}
	c, err := testcontainers.Run(ctx, b.image, opts...)
	if c != nil {
		b.mu.Lock()
		b.ctrs[node-1] = c
		b.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("run %s: %w", b.image, err)
	}
	return nil
}

// logfLogger sends testcontainers' messages to the harness's logf (t.Logf
// under [Start]: shown only for failed tests or with -v).
type logfLogger func(format string, args ...any)

func (l logfLogger) Printf(format string, args ...any) { l(format, args...) }

func (b *containerBackend) state(ctx context.Context, node int) (*container.State, error) {
	c := b.ctr(node)
	if c == nil {
		return nil, errors.New("never started")
	}
	return c.State(ctx)
}

func (b *containerBackend) exited(ctx context.Context, node int) error {
	st, err := b.state(ctx, node)
	if err != nil {
		if ctx.Err() != nil {
			return nil // could not tell in time: not proof of an exit
		}
		return err
	}
	if !st.Running {
		return fmt.Errorf("container %s, exit code %d %s", st.Status, st.ExitCode, st.Error)
	}
	return nil
}

// waitNotRunning waits until a node's container has stopped.
func (b *containerBackend) waitNotRunning(ctx context.Context, node int) error {
	return poll(ctx, 100*time.Millisecond, fmt.Sprintf("container of node %d to stop", node), func(ctx context.Context) (bool, string, error) {
		st, err := b.state(ctx, node)
		if err != nil {
			return false, err.Error(), nil
		}
		return !st.Running, string(st.Status), nil
	})
}

func (b *containerBackend) stop(ctx context.Context, node int) error {
	c := b.ctr(node)
	if c == nil {
		return errors.New("never started")
	}
	id := c.GetContainerID()
	if st, err := c.State(ctx); err == nil && st.Paused {
		_, _ = b.cli.ContainerUnpause(ctx, id, client.ContainerUnpauseOptions{})
	}
	secs := 60
	if d, ok := ctx.Deadline(); ok {
		secs = max(1, int(time.Until(d).Seconds())-1)
	}
	if _, err := b.cli.ContainerStop(ctx, id, client.ContainerStopOptions{Timeout: &secs}); err != nil {
		return err
	}
	return b.waitNotRunning(ctx, node)
}

func (b *containerBackend) kill(ctx context.Context, node int) error {
	c := b.ctr(node)
	if c == nil {
		return nil
	}
	st, err := c.State(ctx)
	if err == nil && !st.Running {
		return nil
	}
	paused := err == nil && st.Paused
	_, err = b.cli.ContainerKill(ctx, c.GetContainerID(), client.ContainerKillOptions{Signal: "KILL"})
	if err != nil && paused {
		// An engine that cannot kill a paused container: let it run for
		// the moment between unpause and kill.
		_, _ = b.cli.ContainerUnpause(ctx, c.GetContainerID(), client.ContainerUnpauseOptions{})
		_, err = b.cli.ContainerKill(ctx, c.GetContainerID(), client.ContainerKillOptions{Signal: "KILL"})
	}
	if err != nil {
		return err
	}
	return b.waitNotRunning(ctx, node)
}

func (b *containerBackend) pause(ctx context.Context, node int) error {
	c := b.ctr(node)
	if c == nil {
		return errors.New("never started")
	}
	_, err := b.cli.ContainerPause(ctx, c.GetContainerID(), client.ContainerPauseOptions{})
	return err
}

func (b *containerBackend) resume(ctx context.Context, node int) error {
	c := b.ctr(node)
	if c == nil {
		return errors.New("never started")
	}
	_, err := b.cli.ContainerUnpause(ctx, c.GetContainerID(), client.ContainerUnpauseOptions{})
	return err
}

var jarVersion = regexp.MustCompile(`kafka_[0-9.]+-([0-9][^ \n]*?)\.jar`)

// version reads the Kafka version from the broker jar's name in
// /opt/kafka/libs, where the official image and the CI image keep them.
func (b *containerBackend) version(ctx context.Context) (string, error) {
	c := b.ctr(1)
	if c == nil {
		return "", errors.New("never started")
	}
	_, r, err := c.Exec(ctx, []string{"ls", "/opt/kafka/libs"}, tcexec.Multiplexed())
	if err != nil {
		return "", err
	}
	out, err := io.ReadAll(r)
	if err != nil {
		return "", err
	}
	if m := jarVersion.FindSubmatch(out); m != nil {
		return string(m[1]), nil
	}
	return "", fmt.Errorf("no kafka jar in /opt/kafka/libs of %s", b.image)
}

func (b *containerBackend) close(ctx context.Context) error {
	var errs []error
	for n := 1; n <= len(b.ctrs); n++ {
		c := b.ctr(n)
		if c == nil {
			continue
		}
		if st, err := c.State(ctx); err == nil && st.Paused {
			_, _ = b.cli.ContainerUnpause(ctx, c.GetContainerID(), client.ContainerUnpauseOptions{})
		}
		// Kill first: the data is thrown away, no clean shutdown needed.
		_ = b.kill(ctx, n)
		if err := c.Terminate(ctx, testcontainers.StopTimeout(0)); err != nil {
			errs = append(errs, fmt.Errorf("terminate node %d: %w", n, err))
		}
	}
	if b.nw != nil {
		if err := b.nw.Remove(ctx); err != nil {
			errs = append(errs, fmt.Errorf("remove network %s: %w", b.nw.Name, err))
		}
	}
	errs = append(errs, b.cli.Close())
	return errors.Join(errs...)
}

func (b *containerBackend) logTail(node, lines int) string {
	c := b.ctr(node)
	if c == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := c.Logs(ctx)
	if err != nil {
		return ""
	}
	defer rc.Close()
	data, _ := io.ReadAll(rc)
	return tail(string(data), lines)
}
