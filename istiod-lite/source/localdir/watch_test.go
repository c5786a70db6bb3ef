package localdir

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// updateWithin is how soon a change must reach OnUpdate.
const updateWithin = time.Second

// startWatcher runs a Watcher on dir until the test ends and returns the
// channel of its snapshots.
func startWatcher(t *testing.T, cfg Config) (*Watcher, <-chan *Snapshot) {
	t.Helper()
	updates := make(chan *Snapshot, 100)
	cfg.OnUpdate = func(s *Snapshot) { updates <- s }
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	w, err := NewWatcher(cfg)
	if err != nil {
		t.Fatalf("NewWatcher() error = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Start() = %v, want nil after cancel", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Start() did not return after cancel")
		}
	})
	return w, updates
}

// waitFor reads snapshots until one satisfies cond, failing after
// updateWithin.
func waitFor(t *testing.T, updates <-chan *Snapshot, what string, cond func(*Snapshot) bool) *Snapshot {
	t.Helper()
	timeout := time.After(updateWithin)
	var last *Snapshot
	for {
		select {
		case s := <-updates:
			if cond(s) {
				return s
			}
			last = s
		case <-timeout:
			var got summary
			if last != nil {
				got = summarize(last)
			}
			t.Fatalf("no snapshot with %s within %v; last: %+v", what, updateWithin, got)
			return nil
		}
	}
}

// podLabel returns the label app of pod ns/name in s, and whether the pod
// exists.
func podLabel(s *Snapshot, ns, name string) (string, bool) {
	for _, p := range s.Inputs.Pods {
		if p.Namespace == ns && p.Name == name {
			return p.Labels["app"], true
		}
	}
	return "", false
}

func hasPodLabel(ns, name, app string) func(*Snapshot) bool {
	return func(s *Snapshot) bool {
		got, ok := podLabel(s, ns, name)
		return ok && got == app
	}
}

func noPod(ns, name string) func(*Snapshot) bool {
	return func(s *Snapshot) bool {
		_, ok := podLabel(s, ns, name)
		return !ok
	}
}

func podYAML(name, app string) string {
	return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name + "\n  namespace: ns1\n  labels:\n    app: " + app + "\n"
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitErrors polls w.Errors until cond holds, failing after updateWithin.
func waitErrors(t *testing.T, w *Watcher, what string, cond func([]error) bool) []error {
	t.Helper()
	deadline := time.Now().Add(updateWithin)
	for {
		errs := w.Errors()
		if cond(errs) {
			return errs
		}
		if time.Now().After(deadline) {
			t.Fatalf("Errors() = %v, want %s within %v", errs, what, updateWithin)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatcher(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "other.yaml"), podYAML("other", "v1"))
	// Long poll: the changes below must arrive through filesystem events.
	w, updates := startWatcher(t, Config{Dir: dir, PollInterval: time.Hour})
	pod := filepath.Join(dir, "pod.yaml")

	waitFor(t, updates, "the initial pod", hasPodLabel("ns1", "other", "v1"))

	t.Run("add", func(t *testing.T) {
		write(t, pod, podYAML("a", "v1"))
		waitFor(t, updates, "pod a", hasPodLabel("ns1", "a", "v1"))
	})
	t.Run("edit", func(t *testing.T) {
		write(t, pod, podYAML("a", "v2"))
		waitFor(t, updates, "pod a edited", hasPodLabel("ns1", "a", "v2"))
	})
	t.Run("rename over", func(t *testing.T) {
		tmp := filepath.Join(dir, ".pod.yaml.swp")
		write(t, tmp, podYAML("a", "v3"))
		if err := os.Rename(tmp, pod); err != nil {
			t.Fatal(err)
		}
		waitFor(t, updates, "pod a renamed over", hasPodLabel("ns1", "a", "v3"))
	})
	t.Run("delete", func(t *testing.T) {
		if err := os.Remove(pod); err != nil {
			t.Fatal(err)
		}
		s := waitFor(t, updates, "pod a gone", noPod("ns1", "a"))
		if _, ok := podLabel(s, "ns1", "other"); !ok {
			t.Errorf("pod other gone with pod a")
		}
	})
	t.Run("break keeps the previous objects", func(t *testing.T) {
		write(t, pod, podYAML("a", "v4"))
		waitFor(t, updates, "pod a back", hasPodLabel("ns1", "a", "v4"))

		write(t, pod, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  labels: [half-edited\n")
		errs := waitErrors(t, w, "a parse error of pod.yaml", func(errs []error) bool { return len(errs) > 0 })
		var pe *ParseError
		if len(errs) != 1 || !errors.As(errs[0], &pe) || pe.File != pod || pe.Line != 5 {
			t.Fatalf("Errors() = %v, want one *ParseError at %s:5", errs, pod)
		}
		// Another file's change applies; the broken file's pod stays.
		write(t, filepath.Join(dir, "other.yaml"), podYAML("other", "v2"))
		s := waitFor(t, updates, "pod other edited", hasPodLabel("ns1", "other", "v2"))
		if got, _ := podLabel(s, "ns1", "a"); got != "v4" {
			t.Errorf("pod a app = %q while its file is broken, want the previous %q", got, "v4")
		}
	})
	t.Run("fix applies", func(t *testing.T) {
		write(t, pod, podYAML("a", "v5"))
		waitFor(t, updates, "pod a fixed", hasPodLabel("ns1", "a", "v5"))
		waitErrors(t, w, "no errors", func(errs []error) bool { return len(errs) == 0 })
	})
	t.Run("new subdirectory", func(t *testing.T) {
		sub := filepath.Join(dir, "team", "apps")
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(sub, "b.yaml"), podYAML("b", "v1"))
		waitFor(t, updates, "pod b", hasPodLabel("ns1", "b", "v1"))
		write(t, filepath.Join(sub, "b.yaml"), podYAML("b", "v2"))
		waitFor(t, updates, "pod b edited", hasPodLabel("ns1", "b", "v2"))
	})
	t.Run("remove subdirectory", func(t *testing.T) {
		if err := os.RemoveAll(filepath.Join(dir, "team")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, updates, "pod b gone", noPod("ns1", "b"))
	})
	t.Run("duplicate reported", func(t *testing.T) {
		write(t, filepath.Join(dir, "z.yaml"), podYAML("a", "dup"))
		waitErrors(t, w, "a duplicate error", func(errs []error) bool {
			return len(errs) == 1 && strings.Contains(errs[0].Error(), "duplicate Pod ns1/a")
		})
	})
}

// TestWatcherPoll checks that the fallback poll alone picks up changes: the
// debounce is far longer than the test, so filesystem events never lead to a
// reload.
func TestWatcherPoll(t *testing.T) {
	dir := t.TempDir()
	w, updates := startWatcher(t, Config{Dir: dir, Debounce: time.Hour, PollInterval: 50 * time.Millisecond})
	waitFor(t, updates, "the initial snapshot", func(*Snapshot) bool { return true })
	write(t, filepath.Join(dir, "p.yaml"), podYAML("p", "v1"))
	waitFor(t, updates, "pod p", hasPodLabel("ns1", "p", "v1"))
	if errs := w.Errors(); len(errs) != 0 {
		t.Errorf("Errors() = %v, want none", errs)
	}
}

func TestWatcherInitialErrors(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "bad.yaml"), "kind: [\n")
	write(t, filepath.Join(dir, "good.yaml"), podYAML("g", "v1"))
	w, updates := startWatcher(t, Config{Dir: dir})
	// The first snapshot is published even when a file is broken.
	waitFor(t, updates, "pod g", hasPodLabel("ns1", "g", "v1"))
	errs := w.Errors()
	if len(errs) != 1 || !strings.HasPrefix(errs[0].Error(), filepath.Join(dir, "bad.yaml")+":") {
		t.Errorf("Errors() = %v, want one error for bad.yaml", errs)
	}
}

func TestNewWatcherValidation(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f.yaml")
	write(t, file, "")
	noop := func(*Snapshot) {}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no dir", Config{OnUpdate: noop}, "Dir is required"},
		{"no OnUpdate", Config{Dir: dir}, "OnUpdate is required"},
		{"missing dir", Config{Dir: filepath.Join(dir, "missing"), OnUpdate: noop}, "no such file"},
		{"not a dir", Config{Dir: file, OnUpdate: noop}, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewWatcher(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewWatcher() error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestWatcherStartTwice(t *testing.T) {
	w, updates := startWatcher(t, Config{Dir: t.TempDir()})
	waitFor(t, updates, "the initial snapshot", func(*Snapshot) bool { return true })
	if err := w.Start(context.Background()); err == nil {
		t.Errorf("second Start() = nil, want an error")
	}
}
