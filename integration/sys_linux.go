package integration

import "syscall"

// sysProcAttr kills a child when the test binary dies, so that no broker
// outlives a crashed or timed-out test run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
