package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
)

// containerLogDir is the log directory inside the container: writable by the
// official image's user, and kept in the container's own layer, so that a
// killed container started again finds its data.
const containerLogDir = "/tmp/kraft-combined-logs"

// containerBackend runs every node as a container (testcontainers-go) on the
// host's network, each on its own 127.0.0.1 ports. Kill is a container kill
// (SIGKILL), Pause a container pause (cgroup freezer), Restart starts the
// same container again.
type containerBackend struct {
	cfg       *config
	image     string
	cli       *testcontainers.DockerClient
	clusterID string
	name      string
	ports     []nodePorts
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
	cli, err := newDockerClient(ctx)
	if err != nil {
		return nil, fmt.Errorf("integration: container backend: %w", err)
	}
	ports, err := allocPorts(cfg.nodes)
	if err != nil {
		cli.Close()
		return nil, err
	}
	b := &containerBackend{
		cfg:       cfg,
		image:     image,
		cli:       cli,
		clusterID: newClusterID(),
		name:      "kdeliver-kafka-" + strings.ToLower(strings.NewReplacer("_", "x", "-", "x").Replace(newClusterID()[:8])),
		ports:     ports,
		ctrs:      make([]*testcontainers.DockerContainer, cfg.nodes),
	}
	for n := 1; n <= cfg.nodes; n++ {
		env := propsEnv(brokerProps(n, ports, containerLogDir, cfg.brokerConfig))
		env["CLUSTER_ID"] = b.clusterID
		env["KAFKA_HEAP_OPTS"] = "-Xms512m -Xmx512m"
		b.env = append(b.env, env)
	}
	return b, nil
}

func (b *containerBackend) addrs() []string {
	out := make([]string, len(b.ports))
	for i, p := range b.ports {
		out[i] = fmt.Sprintf("127.0.0.1:%d", p.broker)
	}
	return out
}

func (b *containerBackend) brokerIDs() []int32 {
	ids := make([]int32, len(b.ports))
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
	c, err := testcontainers.Run(ctx, b.image,
		testcontainers.WithLogger(logfLogger(b.cfg.logf)),
		testcontainers.WithName(fmt.Sprintf("%s-%d", b.name, node)),
		testcontainers.WithEnv(maps.Clone(b.env[node-1])),
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.NetworkMode = "host"
		}),
	)
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
	for n := 1; n <= len(b.ports); n++ {
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
