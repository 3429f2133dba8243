//go:build !unix

package main

import (
	"errors"
	"os/exec"
	"syscall"
)

var errNoUnix = errors.New("--run needs a Unix system (sh and process groups); run the pipeline yourself and verify without --run")

func shellCommand(string) (*exec.Cmd, error) { return nil, errNoUnix }

func signalGroup(*exec.Cmd, syscall.Signal) error { return errNoUnix }

const (
	sigKILL syscall.Signal = 9
	sigTERM syscall.Signal = 15
)
