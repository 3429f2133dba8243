//go:build !unix

package integration

import "syscall"

// No SIGSTOP/SIGCONT here: pausing a process is unsupported.
const (
	sigSTOP syscall.Signal = 0
	sigCONT syscall.Signal = 0
)
