package shared

import (
	"context"
	"log/slog"
)

// Log returns the logger of s: the one given with kdeliver.WithLogger, else
// one that passes warnings and errors to slog.Default() (looked up at each
// call, so a default set later is used), so that a record retried for ever
// or a client replaced after a failure is never silent.
func (s *Settings) Log() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(defaultHandler{})
}

// defaultHandler writes records at slog.LevelWarn and above through
// slog.Default()'s handler.
type defaultHandler struct {
	ops []func(slog.Handler) slog.Handler // WithAttrs and WithGroup, in order
}

func (h defaultHandler) target() slog.Handler {
	t := slog.Default().Handler()
	for _, op := range h.ops {
		t = op(t)
	}
	return t
}

func (h defaultHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && slog.Default().Handler().Enabled(ctx, l)
}

func (h defaultHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.target().Handle(ctx, r)
}

func (h defaultHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return h.with(func(t slog.Handler) slog.Handler { return t.WithAttrs(attrs) })
}

func (h defaultHandler) WithGroup(name string) slog.Handler {
	return h.with(func(t slog.Handler) slog.Handler { return t.WithGroup(name) })
}

func (h defaultHandler) with(op func(slog.Handler) slog.Handler) slog.Handler {
	return defaultHandler{ops: append(append([]func(slog.Handler) slog.Handler(nil), h.ops...), op)}
}
