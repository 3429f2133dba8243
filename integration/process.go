package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// jvmOptions are the broker JVM's options, after Kafka's own scripts, with
// the heap from shared/notes/kafka.md.
var jvmOptions = []string{
	"-Xms512m", "-Xmx512m",
	"-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
	"-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
}

// processBackend runs every node as a host java process.
type processBackend struct {
	cfg       *config
	java      string
	libs      string // folder of jars
	jarVer    string
	dir       string
	clusterID string
	ports     []nodePorts
	nodes     []*procNode
}

type procNode struct {
	n       int
	dir     string
	props   string
	logPath string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has exited
	waitErr error
	paused  bool
}

var kafkaJar = regexp.MustCompile(`^kafka_[0-9.]+-([0-9][^-]*(?:-[A-Za-z0-9]+)?)\.jar$`)

// findLibs returns the folder of jars and the Kafka version in it.
func findLibs(home string) (libs, version string, err error) {
	for _, dir := range []string{filepath.Join(home, "libs"), home} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if m := kafkaJar.FindStringSubmatch(e.Name()); m != nil {
				return dir, m[1], nil
			}
		}
	}
	return "", "", fmt.Errorf("integration: no kafka_2.13-*.jar in %s or %s/libs", home, home)
}

// defaultHome returns the newest ~/.cache/kdeliver/kafka-* folder.
func defaultHome() string {
	base, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	dirs, _ := filepath.Glob(filepath.Join(base, "kdeliver", "kafka-*"))
	var best, bestVer string
	for _, d := range dirs {
		if _, v, err := findLibs(d); err == nil && versionLess(bestVer, v) {
			best, bestVer = d, v
		}
	}
	return best
}

// versionLess compares dotted versions numerically ("" is least).
func versionLess(a, b string) bool {
	if a == "" {
		return b != ""
	}
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(pa) && i < len(pb); i++ {
		var x, y int
		fmt.Sscanf(pa[i], "%d", &x)
		fmt.Sscanf(pb[i], "%d", &y)
		if x != y {
			return x < y
		}
	}
	return len(pa) < len(pb)
}

func javaPath() (string, error) {
	if jh := os.Getenv("JAVA_HOME"); jh != "" {
		p := filepath.Join(jh, "bin", "java")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("java")
	if err != nil {
		return "", fmt.Errorf("integration: the process backend needs java 17+ (JAVA_HOME or PATH): %w", err)
	}
	return p, nil
}

func newProcess(ctx context.Context, cfg *config) (nodeBackend, error) {
	home := cfg.home
	if home == "" {
		home = os.Getenv(EnvHome)
	}
	if home == "" {
		home = defaultHome()
	}
	if home == "" {
		return nil, fmt.Errorf("integration: process backend: no Kafka jars: set %s or run .ci/kafka/fetch", EnvHome)
	}
	libs, ver, err := findLibs(home)
	if err != nil {
		return nil, err
	}
	java, err := javaPath()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kdeliver-kafka-")
	if err != nil {
		return nil, fmt.Errorf("integration: %w", err)
	}
	b := &processBackend{cfg: cfg, java: java, libs: libs, jarVer: ver, dir: dir, clusterID: newClusterID()}
	fail := func(err error) (nodeBackend, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "log4j2.properties"), []byte(log4j2Props), 0o644); err != nil {
		return fail(fmt.Errorf("integration: %w", err))
	}
	if b.ports, err = allocPorts(cfg.nodes, cfg.sec != nil); err != nil {
		return fail(err)
	}
	for n := 1; n <= cfg.nodes; n++ {
		nd := &procNode{n: n, dir: filepath.Join(dir, fmt.Sprintf("node-%d", n))}
		nd.props = filepath.Join(nd.dir, "server.properties")
		nd.logPath = filepath.Join(nd.dir, "kafka.log")
		props := brokerProps(n, cfg.nodes, loopbackListeners(n, b.ports), cfg.sec, filepath.Join(nd.dir, "data"), cfg.brokerConfig)
		if err := os.MkdirAll(nd.dir, 0o755); err != nil {
			return fail(fmt.Errorf("integration: %w", err))
		}
		if err := os.WriteFile(nd.props, []byte(propsFile(props)), 0o644); err != nil {
			return fail(fmt.Errorf("integration: %w", err))
		}
		b.nodes = append(b.nodes, nd)
	}
	// Format every node's log directory with the same cluster ID, in
	// parallel: each is a JVM start of about a second.
	errs := make([]error, len(b.nodes))
	var wg sync.WaitGroup
	for i, nd := range b.nodes {
		wg.Go(func() { errs[i] = b.format(ctx, nd) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fail(err)
	}
	return b, nil
}

func (b *processBackend) classpath() string { return filepath.Join(b.libs, "*") }

func (b *processBackend) log4j() string {
	return "-Dlog4j2.configurationFile=" + filepath.Join(b.dir, "log4j2.properties")
}

func (b *processBackend) format(ctx context.Context, nd *procNode) error {
	args := []string{"-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", b.log4j(),
		"-cp", b.classpath(), "kafka.tools.StorageTool", "format", "-t", b.clusterID, "-c", nd.props}
	if b.cfg.sec != nil {
		// SCRAM credentials live in the cluster metadata: the admin's is
		// put in the bootstrap records (KIP-900).
		args = append(args, "--add-scram", b.cfg.sec.addScram())
	}
	cmd := exec.CommandContext(ctx, b.java, args...)
	cmd.Dir = nd.dir
	cmd.SysProcAttr = sysProcAttr()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("integration: format node %d: %w\n%s", nd.n, err, tail(string(out), 30))
	}
	return nil
}

func (b *processBackend) addrs() []string {
	out := make([]string, len(b.ports))
	for i, p := range b.ports {
		out[i] = fmt.Sprintf("127.0.0.1:%d", p.broker)
	}
	return out
}

func (b *processBackend) brokerIDs() []int32 {
	ids := make([]int32, len(b.ports))
	for i := range ids {
		ids[i] = int32(i + 1)
	}
	return ids
}

func (b *processBackend) version(context.Context) (string, error) { return b.jarVer, nil }

func (b *processBackend) secureAddrs() []string {
	out := make([]string, len(b.ports))
	for i, p := range b.ports {
		out[i] = fmt.Sprintf("127.0.0.1:%d", p.secure)
	}
	return out
}

func (b *processBackend) formatsScram() bool { return true }

func (b *processBackend) start(_ context.Context, node int) error {
	nd := b.nodes[node-1]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd != nil && !isClosed(nd.done) {
		return fmt.Errorf("node %d is running", node)
	}
	logf, err := os.OpenFile(nd.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "===== kdeliver integration: starting node %d at %s =====\n", node, time.Now().Format(time.RFC3339Nano))
	args := append(slices.Clone(jvmOptions), b.log4j(), "-cp", b.classpath(), "kafka.Kafka", nd.props)
	// Not CommandContext: the node outlives the start's context.
	cmd := exec.Command(b.java, args...)
	cmd.Dir = nd.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	nd.cmd, nd.done, nd.waitErr, nd.paused = cmd, make(chan struct{}), nil, false
	done := nd.done
	go func() {
		err := cmd.Wait()
		logf.Close()
		nd.mu.Lock()
		nd.waitErr = err
		nd.mu.Unlock()
		close(done)
	}()
	return nil
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// running returns the node's process and its done channel, or an error if
// it is not running.
func (b *processBackend) running(node int) (*exec.Cmd, chan struct{}, error) {
	nd := b.nodes[node-1]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd == nil {
		return nil, nil, errors.New("never started")
	}
	if isClosed(nd.done) {
		return nil, nil, fmt.Errorf("exited: %v", nd.waitErr)
	}
	return nd.cmd, nd.done, nil
}

func (b *processBackend) exited(_ context.Context, node int) error {
	_, _, err := b.running(node)
	return err
}

func (b *processBackend) signal(node int, sig syscall.Signal) error {
	cmd, _, err := b.running(node)
	if err != nil {
		return err
	}
	return cmd.Process.Signal(sig)
}

func (b *processBackend) stop(ctx context.Context, node int) error {
	cmd, done, err := b.running(node)
	if err != nil {
		return err
	}
	_ = cmd.Process.Signal(sigCONT) // a paused node cannot shut down
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		_ = b.kill(context.Background(), node)
		return fmt.Errorf("clean shutdown did not finish, killed: %w", ctx.Err())
	}
}

func (b *processBackend) kill(ctx context.Context, node int) error {
	cmd, done, err := b.running(node)
	if err != nil {
		return nil // already down
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("process %d did not exit after SIGKILL: %w", cmd.Process.Pid, ctx.Err())
	}
}

func (b *processBackend) pause(_ context.Context, node int) error {
	if sigSTOP == 0 {
		return ErrUnsupported
	}
	return b.signal(node, sigSTOP)
}

func (b *processBackend) resume(_ context.Context, node int) error {
	if sigCONT == 0 {
		return ErrUnsupported
	}
	return b.signal(node, sigCONT)
}

func (b *processBackend) close(ctx context.Context) error {
	var errs []error
	for n := range b.nodes {
		if err := b.kill(ctx, n+1); err != nil {
			errs = append(errs, err)
		}
	}
	if envTrue(EnvKeep) {
		b.cfg.logf("integration: kept %s (logs in node-*/kafka.log)", b.dir)
	} else if err := os.RemoveAll(b.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (b *processBackend) logTail(node, lines int) string {
	data, err := os.ReadFile(b.nodes[node-1].logPath)
	if err != nil {
		return ""
	}
	return tail(string(data), lines)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	i := len(s)
	for range n {
		j := strings.LastIndexByte(s[:i], '\n')
		if j < 0 {
			return s
		}
		i = j
	}
	return s[i+1:]
}

// lastLines keeps the last n lines written to it.
type lastLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (l *lastLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if l.buf.Len() > l.max {
		b := l.buf.Bytes()
		b = b[len(b)-l.max:]
		l.buf.Reset()
		l.buf.Write(b)
	}
	return len(p), nil
}

func (l *lastLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
