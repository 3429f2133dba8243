//go:build !cgo

package main

import (
	"context"
	"errors"
)

// confluentBuilt is false where cgo is off: confluent-kafka-go wraps
// librdkafka (bundled, linked statically) and needs a C compiler.
const confluentBuilt = false

var errNoCgo = errors.New("confluent-kafka-go needs cgo: build with CGO_ENABLED=1 and a C compiler (gcc)")

func confluentVersion() string { return "not built (no cgo)" }

func confluentProduce(context.Context, *env, int) (result, error) { return result{}, errNoCgo }

func confluentConsume(context.Context, *env, string, string, int) (result, error) {
	return result{}, errNoCgo
}

func confluentCopy(context.Context, *env, string, string, string, int) (result, error) {
	return result{}, errNoCgo
}
