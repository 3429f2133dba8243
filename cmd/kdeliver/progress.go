package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/kdeliver/kdeliver"
)

// progress prints one status line on stderr while a row runs: rewritten in
// place with \r on a terminal, a line every few seconds otherwise.
type progress struct {
	w     io.Writer
	tty   bool
	every time.Duration

	mu    sync.Mutex
	width int
	done  chan struct{}
	wg    sync.WaitGroup
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, every: 2 * time.Second}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty, p.every = true, 200*time.Millisecond
		}
	}
	return p
}

// start prints the status of a row now, then every few seconds (a fifth of
// a second on a terminal) until stop, which prints it once more.
func (p *progress) start(sem kdeliver.Semantics, t *tally, f *faultPlan) {
	p.done = make(chan struct{})
	status := func() {
		line := fmt.Sprintf("kdeliver demo: %s: sent %d/%d, acknowledged %d, delivered %d, handler calls %d",
			sem, t.sent.Load(), t.n, t.ackedN.Load(), t.distinct.Load(), t.calls.Load())
		if f != nil {
			line += fmt.Sprintf(", faults %d", f.count())
		}
		if len(t.crashAt) > 0 {
			line += fmt.Sprintf(", crashes %d", t.crashes.Load())
		}
		p.print(line)
	}
	status()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer status()
		tick := time.NewTicker(p.every)
		defer tick.Stop()
		for {
			select {
			case <-p.done:
				return
			case <-tick.C:
				status()
			}
		}
	}()
}

func (p *progress) stop() {
	close(p.done)
	p.wg.Wait()
}

func (p *progress) print(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.tty {
		fmt.Fprintln(p.w, line)
		return
	}
	pad := max(p.width-len(line), 0)
	fmt.Fprintf(p.w, "\r%s%s", line, strings.Repeat(" ", pad))
	p.width = len(line)
}

// clear erases the status line on a terminal.
func (p *progress) clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.width > 0 {
		fmt.Fprintf(p.w, "\r%s\r", strings.Repeat(" ", p.width))
		p.width = 0
	}
}
