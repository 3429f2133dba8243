package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvHelper names the test function that a [StartHelper] process runs.
const EnvHelper = "KDELIVER_TEST_HELPER"

// Process is a child process that a test can kill (SIGKILL), freeze
// (SIGSTOP) and wait for: a producer or consumer under test that must die
// without running its deferred calls or Close. Its methods are safe to call
// from several goroutines.
type Process struct {
	name string
	cmd  *exec.Cmd
	out  *lastLines
	done chan struct{}

	mu  sync.Mutex
	err error
}

// outputKept is how much of a process's output [Process.Output] keeps.
const outputKept = 1 << 20

// StartProcess starts a program with args; env entries (KEY=VALUE) are added
// to the test's environment. It calls tb.Fatal if the program cannot start.
// The process is killed in tb.Cleanup, which also logs the end of its output
// when the test failed. On Linux it is killed when the test binary dies.
func StartProcess(tb testing.TB, program string, args []string, env ...string) *Process {
	tb.Helper()
	cmd := exec.Command(program, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = sysProcAttr()
	p := &Process{name: program, cmd: cmd, out: &lastLines{max: outputKept}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("integration: start %s: %v", program, err)
	}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	tb.Cleanup(func() {
		_ = p.Kill()
		if tb.Failed() {
			tb.Logf("integration: output of %s (pid %d), last lines:\n%s", p.name, p.Pid(), tail(p.Output(), 40))
		}
	})
	return p
}

// StartHelper runs the test function named test of the current test binary
// as a separate process (the os/exec test pattern), with env added to its
// environment and EnvHelper set to test. The helper test should begin with
//
//	if !integration.InHelper("TestHelperProducer") {
//		t.Skip("runs only as a helper process")
//	}
//
// Pass [Cluster.Env] in env so that the helper reaches the same cluster.
func StartHelper(tb testing.TB, test string, env ...string) *Process {
	tb.Helper()
	args := []string{"-test.run=^" + regexp.QuoteMeta(test) + "$", "-test.v", "-test.count=1"}
	env = append([]string{EnvHelper + "=" + test}, env...)
	p := StartProcess(tb, os.Args[0], args, env...)
	p.name = test
	return p
}

// InHelper reports whether this process was started by [StartHelper] to run
// the test function named test.
func InHelper(test string) bool { return os.Getenv(EnvHelper) == test }

// Pid returns the process ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("integration: signal %s: %w", p.name, err)
	}
	return nil
}

// Kill kills the process with SIGKILL and waits until it is gone, at most
// 30 seconds. Killing a process that has exited does nothing.
func (p *Process) Kill() error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("integration: %s (pid %d) still running 30s after SIGKILL", p.name, p.Pid())
	}
}

// Pause freezes the process with SIGSTOP.
func (p *Process) Pause() error {
	if sigSTOP == 0 {
		return ErrUnsupported
	}
	return p.Signal(sigSTOP)
}

// Resume continues a process frozen by [Process.Pause] (SIGCONT).
func (p *Process) Resume() error {
	if sigCONT == 0 {
		return ErrUnsupported
	}
	return p.Signal(sigCONT)
}

// Wait waits until the process exits, bounded by ctx, and returns its exit
// error (nil for exit status 0; an *exec.ExitError otherwise).
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("integration: wait for %s (pid %d): %w", p.name, p.Pid(), ctx.Err())
	}
}

// Output returns the process's combined stdout and stderr so far (the last
// MiB of it).
func (p *Process) Output() string { return p.out.String() }
