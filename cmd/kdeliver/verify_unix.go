//go:build unix

package main

import (
	"os/exec"
	"syscall"
)

// shellCommand runs line with sh -c in a process group of its own, so that
// a signal reaches the pipeline's processes, not only the shell.
func shellCommand(line string) (*exec.Cmd, error) {
	cmd := exec.Command("sh", "-c", line)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, nil
}

// signalGroup sends sig to the process group cmd leads.
func signalGroup(cmd *exec.Cmd, sig syscall.Signal) error {
	return syscall.Kill(-cmd.Process.Pid, sig)
}

const (
	sigKILL = syscall.SIGKILL
	sigTERM = syscall.SIGTERM
)
