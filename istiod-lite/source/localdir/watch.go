package localdir

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Defaults of Config.
const (
	// DefaultDebounce is short: saving a file (even by rename) or copying
	// a few files produces its events within microseconds to a few
	// milliseconds, and a reload only reads and decodes what changed. A
	// writer slower than this may cause an extra snapshot, never a
	// half-parsed file (see Watcher).
	DefaultDebounce     = 20 * time.Millisecond
	DefaultPollInterval = 2 * time.Second
)

// Config configures a Watcher. Dir and OnUpdate are required.
type Config struct {
	Dir      string        // required: the directory to watch, recursively
	Debounce time.Duration // default 20ms: changes within this window are coalesced
	// PollInterval is how often file sizes and mtimes are compared, in case
	// filesystem events were missed; default 2s.
	PollInterval time.Duration
	Logger       *slog.Logger // default: discard
	// OnUpdate is required. It is called from Start's goroutine, with the
	// first snapshot and then after every change to the objects; the next
	// change waits until it returns.
	OnUpdate func(*Snapshot)
}

// Watcher watches a directory (fsnotify on it and its subdirectories, plus a
// poll of mtimes and sizes) and calls OnUpdate with a new Snapshot after
// changes.
//
// It keeps the last good state: while a file fails to parse, its error is
// logged once and reported by Errors, and the previous good version of that
// file's objects stays in the snapshots; other files' changes still apply.
// A file that has never parsed contributes nothing.
type Watcher struct {
	cfg     Config
	log     *slog.Logger
	started atomic.Bool

	mu   sync.Mutex
	errs []error

	// Owned by Start's goroutine.
	states  map[string]*fileState
	polled  []fileInfo
	logged  map[string]bool // messages of the current errors, each logged once
	watched map[string]bool // directories added to fsnotify
	lastSum [sha256.Size]byte
	updated bool // whether OnUpdate has been called
	// dirty holds the paths named by file events since the last reload;
	// rereadAll is set when events may have been lost.
	dirty     map[string]bool
	rereadAll bool
}

// NewWatcher validates cfg and returns a Watcher that Start runs.
func NewWatcher(cfg Config) (*Watcher, error) {
	if cfg.Dir == "" {
		return nil, errors.New("localdir: Config.Dir is required")
	}
	if cfg.OnUpdate == nil {
		return nil, errors.New("localdir: Config.OnUpdate is required")
	}
	info, err := os.Stat(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("localdir: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("localdir: %s is not a directory", cfg.Dir)
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{
		cfg:     cfg,
		log:     log.With("component", "localdir", "dir", cfg.Dir),
		states:  map[string]*fileState{},
		logged:  map[string]bool{},
		watched: map[string]bool{},
		dirty:   map[string]bool{},
	}, nil
}

// Errors returns the current errors: files that do not parse (whose previous
// good version is in use) and duplicate objects.
func (w *Watcher) Errors() []error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.errs)
}

// Start reads the directory, calls OnUpdate with the first snapshot, and then
// follows changes until ctx is done, when it returns nil. It may be called
// only once.
func (w *Watcher) Start(ctx context.Context) error {
	if !w.started.CompareAndSwap(false, true) {
		return errors.New("localdir: watcher already started")
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("localdir: starting file watcher: %w", err)
	}
	defer fsw.Close()

	w.reload(fsw)

	poll := time.NewTicker(w.cfg.PollInterval)
	defer poll.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	pending := false

	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fsw.Events:
			if !ok {
				return errors.New("localdir: file watcher closed")
			}
			w.log.Debug("file event", "event", ev.Op.String(), "path", ev.Name)
			w.dirty[ev.Name] = true
			if !pending {
				pending = true
				debounce.Reset(w.cfg.Debounce)
			}
		case err, ok := <-fsw.Errors:
			if !ok {
				return errors.New("localdir: file watcher closed")
			}
			// Events may have been lost (e.g. queue overflow): read everything.
			w.log.Warn("file watcher error", "error", err)
			w.rereadAll = true
			if !pending {
				pending = true
				debounce.Reset(w.cfg.Debounce)
			}
		case <-debounce.C:
			pending = false
			w.reload(fsw)
		case <-poll.C:
			files, _, err := scan(w.cfg.Dir)
			if err == nil && !slices.Equal(files, w.polled) {
				w.log.Debug("poll found changes")
				w.reload(fsw)
			}
		}
	}
}

// reload rereads the directory, updates the watches and the errors, and
// calls OnUpdate when the objects changed (or on the first call).
func (w *Watcher) reload(fsw *fsnotify.Watcher) {
	files, dirs, err := scan(w.cfg.Dir)
	if err != nil {
		// The directory itself is unreadable (perhaps being replaced): keep
		// the current state and try again on the next event or poll.
		w.setErrors([]error{err})
		if !w.updated {
			snap, _ := assemble(w.states)
			w.publish(snap)
		}
		return
	}
	w.polled = files
	w.watch(fsw, dirs)

	states := make(map[string]*fileState, len(files))
	var errs []error
	for _, f := range files {
		st := w.states[f.path]
		if st == nil {
			st = &fileState{}
		}
		// A file no event named whose size and mtime are those of its
		// last read, and that read well, is not read again.
		if w.rereadAll || w.dirty[f.path] || st.err != nil || st.size != f.size || !st.mtime.Equal(f.mtime) || st.mtime.IsZero() {
			st.size, st.mtime = f.size, f.mtime
			if err := st.read(f.path); err != nil {
				errs = append(errs, err)
			}
		}
		states[f.path] = st
	}
	clear(w.dirty)
	w.rereadAll = false
	w.states = states
	snap, dups := assemble(states)
	w.setErrors(append(errs, dups...))

	if sum := w.contentSum(); !w.updated || sum != w.lastSum {
		w.lastSum = sum
		w.publish(snap)
	}
}

func (w *Watcher) publish(snap *Snapshot) {
	w.updated = true
	w.log.Debug("publishing snapshot", "pods", len(snap.Inputs.Pods), "services", len(snap.Inputs.Services))
	w.cfg.OnUpdate(snap)
}

// contentSum identifies the good versions of all files.
func (w *Watcher) contentSum() [sha256.Size]byte {
	h := sha256.New()
	for _, p := range sortedPaths(w.states) {
		if st := w.states[p]; st.good {
			h.Write([]byte(p))
			h.Write([]byte{0})
			h.Write(st.sum[:])
		}
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// watch makes fsnotify follow exactly dirs.
func (w *Watcher) watch(fsw *fsnotify.Watcher, dirs []string) {
	want := make(map[string]bool, len(dirs))
	for _, d := range dirs {
		want[d] = true
		if w.watched[d] {
			continue
		}
		if err := fsw.Add(d); err != nil {
			w.log.Warn("cannot watch directory; relying on polling", "path", d, "error", err)
			continue
		}
		w.watched[d] = true
	}
	for d := range w.watched {
		if !want[d] {
			_ = fsw.Remove(d) // usually already gone with the directory
			delete(w.watched, d)
		}
	}
}

// setErrors records the current errors and logs those not logged before.
func (w *Watcher) setErrors(errs []error) {
	logged := make(map[string]bool, len(errs))
	for _, err := range errs {
		msg := err.Error()
		if !w.logged[msg] {
			w.log.Error("invalid configuration", "error", msg)
		}
		logged[msg] = true
	}
	if len(errs) == 0 && len(w.logged) > 0 {
		w.log.Info("configuration errors resolved")
	}
	w.logged = logged
	w.mu.Lock()
	w.errs = errs
	w.mu.Unlock()
}
