package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// logged runs log against a logger built on Levels (default info, the
// components proxy, xds-client and the access log registered, as a proxy's
// loggers do at start) after applying spec, and returns "component:msg" of
// each line written.
func logged(t *testing.T, spec string, log func(*slog.Logger)) []string {
	t.Helper()
	var buf bytes.Buffer
	l := NewLevels(nil)
	root := slog.New(l.Handler(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: l})))
	proxy := root.With("component", "proxy")
	xds := root.With("component", "xds-client")
	access := proxy.With("scope", Access)
	if spec != "" {
		if err := l.Set(spec); err != nil {
			t.Fatalf("Set(%q) = %v", spec, err)
		}
	}
	log(root)
	proxy.Debug("proxy debug")
	proxy.Info("proxy info")
	xds.Debug("xds debug")
	xds.Warn("xds warn")
	access.Info("access info")
	access.WithGroup("g").With("component", "inner").Debug("access grouped debug")
	root.Debug("root debug")
	root.Info("root info")
	root.Debug("record-scoped debug", "component", "proxy")

	var got []string
	for line := range strings.SplitSeq(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		got = append(got, m["msg"].(string))
	}
	return got
}

func TestHandlerLevels(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec string
		want []string
	}{
		{
			name: "default info",
			want: []string{"proxy info", "xds warn", "access info", "root info"},
		},
		{
			name: "proxy at debug: its debug records and no one else's",
			spec: "proxy:debug",
			want: []string{"proxy debug", "proxy info", "xds warn", "access info", "root info", "record-scoped debug"},
		},
		{
			name: "access off, xds-client at error",
			spec: "access:off,xds-client:error",
			want: []string{"proxy info", "root info"},
		},
		{
			name: "default debug, access at warn",
			spec: "debug,access:warn",
			want: []string{"proxy debug", "proxy info", "xds debug", "xds warn", "root debug", "root info", "record-scoped debug"},
		},
		{
			name: "a grouped attribute names no component",
			spec: "access:debug",
			want: []string{"proxy info", "xds warn", "access info", "access grouped debug", "root info"},
		},
		{
			name: "all:LEVEL drops the components' own levels",
			spec: "access:off,all:warn",
			want: []string{"xds warn"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := logged(t, tc.spec, func(*slog.Logger) {})
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("records written after Set(%q) (-want +got):\n%s", tc.spec, diff)
			}
		})
	}
}

func TestSetAndString(t *testing.T) {
	for _, tc := range []struct {
		name    string
		specs   []string
		want    string
		wantErr error
	}{
		{name: "initial", want: "info"},
		{name: "component", specs: []string{"proxy:debug"}, want: "info,proxy:debug"},
		{name: "default keeps components' own", specs: []string{"proxy:debug", "warn"}, want: "warn,proxy:debug"},
		{name: "default:LEVEL", specs: []string{"default:error"}, want: "error"},
		{name: "all resets components", specs: []string{"proxy:debug,access:off", "all:info"}, want: "info"},
		{name: "several, spaces, case", specs: []string{" access : OFF , Debug "}, want: "debug,access:off"},
		{name: "unknown component changes nothing", specs: []string{"proxy:debug", "warn,xds:info"}, want: "info,proxy:debug", wantErr: ErrUnknownComponent},
		{name: "bad level changes nothing", specs: []string{"proxy:loud"}, want: "info", wantErr: errors.New("invalid level")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := NewLevels(nil)
			l.Var("proxy")
			l.Var(Access)
			var err error
			for _, s := range tc.specs {
				if err = l.Set(s); err != nil {
					break
				}
			}
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("Set(%q) = %v, want no error", tc.specs, err)
			case tc.wantErr != nil && err == nil:
				t.Fatalf("Set(%q) = nil, want an error like %v", tc.specs, tc.wantErr)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr) && !strings.Contains(err.Error(), tc.wantErr.Error()):
				t.Fatalf("Set(%q) = %v, want %v", tc.specs, err, tc.wantErr)
			}
			if got := l.String(); got != tc.want {
				t.Errorf("String() after Set(%q) = %q, want %q", tc.specs, got, tc.want)
			}
		})
	}
}

// TestVarFollowsDefault: the access log holds Var(Access) as its level; it
// follows the default until access gets a level of its own, and Reset puts
// it back.
func TestVarFollowsDefault(t *testing.T) {
	def := new(slog.LevelVar)
	def.Set(slog.LevelWarn)
	l := NewLevels(def)
	v := l.Var(Access)
	steps := []struct {
		do   func()
		want slog.Level
		min  slog.Level
	}{
		{func() {}, slog.LevelWarn, slog.LevelWarn},
		{func() { l.Set("info") }, slog.LevelInfo, slog.LevelInfo},
		{func() { l.Set("access:debug") }, slog.LevelDebug, slog.LevelDebug},
		{func() { l.Set("error") }, slog.LevelDebug, slog.LevelDebug},
		{func() { l.Reset() }, slog.LevelWarn, slog.LevelWarn},
	}
	for i, s := range steps {
		s.do()
		if got := v.Level(); got != s.want {
			t.Errorf("step %d: access level = %v, want %v", i, got, s.want)
		}
		if got := l.Level(); got != s.min {
			t.Errorf("step %d: Level() = %v, want %v", i, got, s.min)
		}
	}
	if def.Level() != slog.LevelWarn {
		t.Errorf("default after Reset = %v, want WARN", def.Level())
	}
}

func TestLevelsOf(t *testing.T) {
	l := NewLevels(nil)
	log := slog.New(l.Handler(slog.DiscardHandler)).With("component", "admin").WithGroup("g")
	if got := LevelsOf(log.Handler()); got != l {
		t.Errorf("LevelsOf(a derived logger's handler) = %p, want %p", got, l)
	}
	if got := LevelsOf(slog.DiscardHandler); got != nil {
		t.Errorf("LevelsOf(another handler) = %p, want nil", got)
	}
}

// BenchmarkDisabledDebug is the cost of a debug call that is not written,
// on a logger scoped with a component.
func BenchmarkDisabledDebug(b *testing.B) {
	l := NewLevels(nil)
	log := slog.New(l.Handler(slog.DiscardHandler)).With("component", "proxy")
	b.ReportAllocs()
	for b.Loop() {
		log.Debug("x")
	}
}
