package preset

import (
	"slices"

	"github.com/kdeliver/kdeliver"
)

// Problems collects configuration problems and turns them into one
// [kdeliver.ConfigError]. The zero value is ready to use.
type Problems struct {
	list []string
}

// Add records a problem when cond is true. msg says what is wrong and how to
// fix it. A message already recorded is not repeated.
func (p *Problems) Add(cond bool, msg string) {
	if cond && !slices.Contains(p.list, msg) {
		p.list = append(p.list, msg)
	}
}

// Len returns the number of problems recorded.
func (p *Problems) Len() int { return len(p.list) }

// Err returns nil when no problem was added, else a [*kdeliver.ConfigError]
// for what.
func (p *Problems) Err(what string, s kdeliver.Semantics) error {
	if len(p.list) == 0 {
		return nil
	}
	return &kdeliver.ConfigError{What: what, Semantics: s, Problems: slices.Clone(p.list)}
}
