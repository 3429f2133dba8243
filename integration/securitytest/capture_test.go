package securitytest

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/kdeliver/kdeliver"
)

// capture collects what every kdeliver client of the suite shows: its log
// (kdeliver's own lines and kgo's, which kdeliver routes to the same
// logger, at debug level), its spans (an OTel SDK tracer provider with an
// in-memory exporter) and the errors the tests got (%v and %+v), so that
// the last test can look for secrets in them.
type capture struct {
	mu   sync.Mutex
	logs bytes.Buffer
	errs []string

	spans *tracetest.InMemoryExporter
	tp    *sdktrace.TracerProvider
	log   *slog.Logger

	secretsMu sync.Mutex
	secrets   map[string][]byte // what must never show, by description
}

func newCapture() *capture {
	c := &capture{spans: tracetest.NewInMemoryExporter(), secrets: map[string][]byte{}}
	c.tp = sdktrace.NewTracerProvider(sdktrace.WithSyncer(c.spans), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	c.log = slog.New(slog.NewJSONHandler(lockedWriter{c}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return c
}

type lockedWriter struct{ c *capture }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	return w.c.logs.Write(p)
}

// opts are the options every client of the suite takes: the capture's
// logger and tracer provider.
func (c *capture) opts() []kdeliver.Option {
	return []kdeliver.Option{kdeliver.WithLogger(c.log), kdeliver.WithTracerProvider(c.tp)}
}

// err records err as %v and %+v and returns it.
func (c *capture) err(err error) error {
	if err == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs = append(c.errs, fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err))
	return err
}

// secret adds a value that must never show.
func (c *capture) secret(what string, v []byte) {
	c.secretsMu.Lock()
	defer c.secretsMu.Unlock()
	c.secrets[what] = v
}

// text returns everything captured, by source.
func (c *capture) text() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]string{
		"log":    c.logs.String(),
		"errors": strings.Join(c.errs, "\n"),
	}
	var b strings.Builder
	for _, s := range c.spans.GetSpans() {
		fmt.Fprintf(&b, "span %q status %q %q\n", s.Name, s.Status.Code, s.Status.Description)
		for _, a := range s.Attributes {
			fmt.Fprintf(&b, "  %s=%s\n", a.Key, a.Value.String())
		}
		for _, e := range s.Events {
			fmt.Fprintf(&b, "  event %q\n", e.Name)
			for _, a := range e.Attributes {
				fmt.Fprintf(&b, "    %s=%s\n", a.Key, a.Value.String())
			}
		}
		for _, l := range s.Links {
			for _, a := range l.Attributes {
				fmt.Fprintf(&b, "  link %s=%s\n", a.Key, a.Value.String())
			}
		}
		for _, a := range s.Resource.Attributes() {
			fmt.Fprintf(&b, "  resource %s=%s\n", a.Key, a.Value.String())
		}
	}
	out["spans"] = b.String()
	return out
}

// encodings returns the forms in which v could show: as it is, in hex and
// in the base64 variants.
func encodings(v []byte) map[string]string {
	return map[string]string{
		"raw":            string(v),
		"hex":            hex.EncodeToString(v),
		"HEX":            strings.ToUpper(hex.EncodeToString(v)),
		"base64":         base64.StdEncoding.EncodeToString(v),
		"base64 raw":     base64.RawStdEncoding.EncodeToString(v),
		"base64 url":     base64.URLEncoding.EncodeToString(v),
		"base64 raw url": base64.RawURLEncoding.EncodeToString(v),
	}
}

// leaks returns a line for every secret found in what was captured, and
// the sizes of what was searched.
func (c *capture) leaks() (found []string, sizes map[string]int, nsecrets int) {
	c.secretsMu.Lock()
	secrets := make(map[string][]byte, len(c.secrets))
	for k, v := range c.secrets {
		secrets[k] = v
	}
	c.secretsMu.Unlock()
	text := c.text()
	sizes = map[string]int{}
	for src, s := range text {
		sizes[src] = len(s)
	}
	for what, v := range secrets {
		for enc, e := range encodings(v) {
			if len(e) < 8 {
				continue // too short to mean anything
			}
			for src, s := range text {
				if i := strings.Index(s, e); i >= 0 {
					found = append(found, fmt.Sprintf("%s (%s) in %s at byte %d: ...%s...", what, enc, src, i, excerpt(s, i, len(e))))
				}
			}
		}
	}
	sort.Strings(found)
	return found, sizes, len(secrets)
}

// excerpt returns the surroundings of s[i:i+n] with the secret itself
// masked, so that a failure report does not show it either.
func excerpt(s string, i, n int) string {
	from, to := max(0, i-60), min(len(s), i+n+60)
	return strings.ReplaceAll(s[from:i]+"<SECRET>"+s[i+n:to], "\n", " ")
}
