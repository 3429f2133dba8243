//go:build unix

package integration

import "syscall"

const (
	sigSTOP = syscall.SIGSTOP
	sigCONT = syscall.SIGCONT
)
