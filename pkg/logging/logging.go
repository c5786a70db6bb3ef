// Package logging gives a proxy's log one level per component, changed at
// run time, as Istio's ztunnel does for its targets (`istioctl
// ztunnel-config log --level access:debug,xds:info`).
//
// A component is the value of the `component` attribute a logger is scoped
// with (log.With("component", "proxy"); the access log's `scope` attribute
// counts as one too: "access"). Levels holds a default level and, for each
// component seen, a *slog.LevelVar holding that component's effective
// level: its own when one was set, else the default. Handler wraps a
// slog.Handler so that each record is kept or dropped by its component's
// level. The check is one atomic load for a logger scoped with a
// component, as a plain slog.LevelVar's.
//
// The admin server's /logging (package admin) shows and changes the
// levels; a level spec is a comma-separated list of LEVEL (the default) and
// COMPONENT:LEVEL items, for example "info,access:debug,xds-client:warn".
// Levels are debug, info, warn, error and off.
package logging

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Access is the access log's component (its records carry scope=access).
const Access = "access"

// LevelOff is the level "off": above every record's.
const LevelOff = slog.Level(math.MaxInt32)

// Levels is a default log level and one level per component. It is safe
// for concurrent use. It implements slog.Leveler as the lowest level in
// force, the level a wrapped handler must at least admit.
type Levels struct {
	mu      sync.Mutex
	def     *slog.LevelVar
	initial slog.Level
	comps   map[string]*component
	min     atomic.Int64
}

type component struct {
	v   *slog.LevelVar // the effective level
	set bool           // v is the component's own, not the default
}

// NewLevels returns Levels whose default level is def's (a new info level
// when nil). def is the default from then on: Set and SetDefault change it.
func NewLevels(def *slog.LevelVar) *Levels {
	if def == nil {
		def = new(slog.LevelVar)
	}
	l := &Levels{def: def, initial: def.Level(), comps: map[string]*component{}}
	l.min.Store(int64(def.Level()))
	return l
}

// Level is the lowest level in force (slog.Leveler).
func (l *Levels) Level() slog.Level { return slog.Level(l.min.Load()) }

// Default returns the default level's variable.
func (l *Levels) Default() *slog.LevelVar { return l.def }

// Var returns the variable holding component name's effective level,
// registering the component: it follows the default until a level is set
// for it. The access log takes Var(Access) as its level.
func (l *Levels) Var(name string) *slog.LevelVar {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.varLocked(name)
}

func (l *Levels) varLocked(name string) *slog.LevelVar {
	c := l.comps[name]
	if c == nil {
		c = &component{v: new(slog.LevelVar)}
		c.v.Set(l.def.Level())
		l.comps[name] = c
	}
	return c.v
}

// Components returns the names of the components seen so far, sorted.
func (l *Levels) Components() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Sorted(maps.Keys(l.comps))
}

// ErrUnknownComponent is returned by Set for a component no logger uses.
var ErrUnknownComponent = errors.New("unknown component")

// Set applies a level spec: comma-separated items, each LEVEL (sets the
// default: components without a level of their own follow it),
// COMPONENT:LEVEL (that component's own level), default:LEVEL (as LEVEL)
// or all:LEVEL (the default, and no component keeps a level of its own).
// Items apply in order. A component must be known (Components): an error
// wrapping ErrUnknownComponent names the known ones. On error nothing is
// changed.
func (l *Levels) Set(spec string) error {
	type item struct {
		comp  string
		level slog.Level
	}
	var items []item
	for it := range strings.SplitSeq(spec, ",") {
		it = strings.TrimSpace(it)
		if it == "" {
			continue
		}
		comp, lv, ok := strings.Cut(it, ":")
		if !ok {
			comp, lv = "default", it
		}
		level, ok := ParseLevel(lv)
		if !ok {
			return fmt.Errorf("invalid level %s: want one of debug, info, warn, error, off", quote(lv))
		}
		items = append(items, item{strings.TrimSpace(comp), level})
	}
	if len(items) == 0 {
		return errors.New("empty level spec")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, it := range items {
		if it.comp == "default" || it.comp == "all" {
			continue
		}
		if _, ok := l.comps[it.comp]; !ok {
			return fmt.Errorf("%w %s: known components are %s", ErrUnknownComponent, quote(it.comp),
				strings.Join(slices.Sorted(maps.Keys(l.comps)), ", "))
		}
	}
	for _, it := range items {
		switch it.comp {
		case "all":
			for _, c := range l.comps {
				c.set = false
			}
			l.setDefaultLocked(it.level)
		case "default":
			l.setDefaultLocked(it.level)
		default:
			c := l.comps[it.comp]
			c.set = true
			c.v.Set(it.level)
		}
	}
	l.updateMinLocked()
	return nil
}

// Reset puts every component back on the default and the default back to
// its level when NewLevels was called.
func (l *Levels) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.comps {
		c.set = false
	}
	l.setDefaultLocked(l.initial)
	l.updateMinLocked()
}

func (l *Levels) setDefaultLocked(level slog.Level) {
	l.def.Set(level)
	for _, c := range l.comps {
		if !c.set {
			c.v.Set(level)
		}
	}
}

func (l *Levels) updateMinLocked() {
	m := l.def.Level()
	for _, c := range l.comps {
		m = min(m, c.v.Level())
	}
	l.min.Store(int64(m))
}

// String is the levels as a spec Set accepts: the default, then each
// component with a level of its own, sorted ("info,access:debug").
func (l *Levels) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	parts := []string{LevelName(l.def.Level())}
	for _, name := range slices.Sorted(maps.Keys(l.comps)) {
		if c := l.comps[name]; c.set {
			parts = append(parts, name+":"+LevelName(c.v.Level()))
		}
	}
	return strings.Join(parts, ",")
}

// ParseLevel parses debug, info, warn (warning), error and off,
// case-insensitively.
func ParseLevel(v string) (slog.Level, bool) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn", "warning":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	case "off":
		return LevelOff, true
	}
	return 0, false
}

// LevelName is level's lower-case name ("info", "warn", "off", "debug+2").
func LevelName(level slog.Level) string {
	if level == LevelOff {
		return "off"
	}
	return strings.ToLower(level.String())
}

// quote bounds and quotes a user-supplied value for an error message.
func quote(v string) string {
	if len(v) > 32 {
		v = v[:32] + "..."
	}
	return fmt.Sprintf("%q", v)
}
