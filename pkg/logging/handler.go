package logging

import (
	"context"
	"log/slog"
)

// Handler returns a slog.Handler that passes to h the records whose
// component's level admits them: a logger scoped with a component
// attribute (With("component", name), or the access log's scope) uses that
// component's level; an unscoped one the component named by the record's
// own component attribute, else the default. h's own level is not
// consulted for the records it is given (give it Levels as its Leveler).
func (l *Levels) Handler(h slog.Handler) slog.Handler {
	return &handler{inner: h, levels: l}
}

// LevelsOf returns the Levels of a handler made by Levels.Handler (or a
// logger's handler derived from one by With), or nil.
func LevelsOf(h slog.Handler) *Levels {
	if lh, ok := h.(*handler); ok {
		return lh.levels
	}
	return nil
}

type handler struct {
	inner  slog.Handler
	levels *Levels
	level  *slog.LevelVar // the component's; nil: not scoped
	groups int            // open groups: attributes inside one name no component
}

var _ slog.Handler = (*handler)(nil)

func (h *handler) Enabled(_ context.Context, level slog.Level) bool {
	if h.level != nil {
		return level >= h.level.Level()
	}
	return level >= h.levels.Level()
}

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	if h.level == nil {
		// Enabled passed the lowest level in force: check the record's
		// own component, else the default.
		floor := h.levels.def.Level()
		r.Attrs(func(a slog.Attr) bool {
			if name, ok := componentOf(a); ok {
				floor = h.levels.Var(name).Level()
				return false
			}
			return true
		})
		if r.Level < floor {
			return nil
		}
	}
	return h.inner.Handle(ctx, r)
}

func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := *h
	n.inner = h.inner.WithAttrs(attrs)
	if h.groups == 0 {
		for _, a := range attrs {
			if name, ok := componentOf(a); ok {
				n.level = h.levels.Var(name)
			}
		}
	}
	return &n
}

func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	n := *h
	n.inner = h.inner.WithGroup(name)
	n.groups++
	return &n
}

// componentOf returns the component an attribute names: the value of a
// "component" attribute, or of the access log's "scope".
func componentOf(a slog.Attr) (string, bool) {
	if (a.Key == "component" || a.Key == "scope") && a.Value.Kind() == slog.KindString {
		return a.Value.String(), true
	}
	return "", false
}
