// Package install puts ztunnel's CNI plugin on a node the way istio-cni
// does: it copies the plugin binary into the runtime's CNI bin directory
// and chains the plugin into the network configuration the node already
// has (the primary CNI's), after the primary plugin, keeping every other
// plugin. It never writes a network of its own: until the primary CNI has
// written its configuration there is nothing to chain into, and the
// installer waits.
//
// The primary configuration is the file the runtime uses: the lexically
// first *.conflist, *.conf or *.json in the configuration directory (or
// the one named by Config.ConfName). A single-plugin .conf is converted to
// a .conflist of the same base name, and the .conf removed, so that the
// runtime, which reads .conf before .conflist of the same name, sees the
// chain. Writes are atomic (temporary file, then rename).
//
// Watch re-inserts the plugin whenever the primary CNI rewrites the file
// (it polls, so renames, rewrites in place and new files are all seen).
// Uninstall removes the plugin's entries and leaves the rest as it found
// it. While the plugin is chained and ztunnel is not ready, the plugin's
// ADD fails (package cni): new pods on the node fail to start with that
// error and the runtime retries them, rather than starting uncaptured.
package install

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// PluginType is the plugin's "type" in the network configuration.
const PluginType = "ztunnel-cni"

// Config configures an Installer. The zero value installs from
// /usr/local/bin/ztunnel-cni into /host/opt/cni/bin and /host/etc/cni/net.d
// (the host's directories as the DaemonSet mounts them).
type Config struct {
	// PluginBinary is the plugin to copy; default /usr/local/bin/ztunnel-cni.
	PluginBinary string
	// BinDir is the runtime's CNI bin directory; default /host/opt/cni/bin.
	BinDir string
	// ConfDir is the runtime's CNI configuration directory; default
	// /host/etc/cni/net.d.
	ConfDir string
	// ConfName, if set, is the configuration file to chain into instead of
	// the lexically first.
	ConfName string
	// Plugin holds the plugin's settings (besides "type"), e.g. zdsSocket
	// and podStateDir; default none (the plugin's own defaults).
	Plugin map[string]any
	// Interval between checks in Watch and WaitForPrimary; default 1s.
	Interval time.Duration
	// Log; default slog.Default().
	Log *slog.Logger
}

// Installer installs and uninstalls the plugin.
type Installer struct {
	cfg Config
	log *slog.Logger
}

// New returns an Installer for cfg.
func New(cfg Config) *Installer {
	cfg.PluginBinary = cmp.Or(cfg.PluginBinary, "/usr/local/bin/ztunnel-cni")
	cfg.BinDir = cmp.Or(cfg.BinDir, "/host/opt/cni/bin")
	cfg.ConfDir = cmp.Or(cfg.ConfDir, "/host/etc/cni/net.d")
	cfg.Interval = cmp.Or(cfg.Interval, time.Second)
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Installer{cfg: cfg, log: log.With("component", "install-cni")}
}

// ErrNoPrimary means the configuration directory holds no network
// configuration to chain into (the primary CNI has not written one yet).
var ErrNoPrimary = errors.New("no primary CNI network configuration")

// Primary returns the path of the configuration file the runtime uses.
func (in *Installer) Primary() (string, error) {
	if in.cfg.ConfName != "" {
		p := filepath.Join(in.cfg.ConfDir, in.cfg.ConfName)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: %w", ErrNoPrimary, err)
		}
		return p, nil
	}
	ents, err := os.ReadDir(in.cfg.ConfDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%w in %s", ErrNoPrimary, in.cfg.ConfDir)
		}
		return "", err
	}
	var names []string
	for _, e := range ents {
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") {
				names = append(names, e.Name())
			}
		}
	}
	slices.Sort(names) // libcni's order: the first file is the network.
	if len(names) == 0 {
		return "", fmt.Errorf("%w in %s", ErrNoPrimary, in.cfg.ConfDir)
	}
	return filepath.Join(in.cfg.ConfDir, names[0]), nil
}

// Install copies the plugin binary and chains the plugin into the primary
// configuration; it returns the file it wrote. It is idempotent: a file
// that already ends with the plugin, as configured, is left untouched.
func (in *Installer) Install() (string, error) {
	if err := in.copyBinary(); err != nil {
		return "", err
	}
	return in.chain()
}

func (in *Installer) copyBinary() error {
	src, err := os.Open(in.cfg.PluginBinary)
	if err != nil {
		return fmt.Errorf("opening the plugin: %w", err)
	}
	defer src.Close()
	if err := os.MkdirAll(in.cfg.BinDir, 0o755); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(in.cfg.BinDir, PluginType), 0o755, func(w io.Writer) error {
		_, err := io.Copy(w, src)
		return err
	})
}

// conflist is a network configuration list with its fields kept as they
// were (unknown ones included) and its plugins in order.
type conflist struct {
	fields  map[string]json.RawMessage
	plugins []map[string]json.RawMessage
}

// parse reads a .conflist, or a single-plugin .conf converted to a list.
func parse(data []byte, isList bool) (*conflist, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return nil, fmt.Errorf("parsing the network configuration: %w", err)
	}
	c := &conflist{fields: fields}
	if !isList {
		// A .conf: network fields stay at the top, the rest is the plugin.
		plugin := map[string]json.RawMessage{}
		c.fields = map[string]json.RawMessage{}
		for k, v := range fields {
			switch k {
			case "cniVersion", "name", "disableCheck", "disableGC":
				c.fields[k] = v
			default:
				plugin[k] = v
			}
		}
		c.plugins = []map[string]json.RawMessage{plugin}
		return c, nil
	}
	if raw, ok := fields["plugins"]; ok {
		if err := json.Unmarshal(raw, &c.plugins); err != nil {
			return nil, fmt.Errorf("parsing the plugin list: %w", err)
		}
	}
	if len(c.plugins) == 0 {
		return nil, errors.New("the network configuration lists no plugin")
	}
	return c, nil
}

func (c *conflist) marshal() ([]byte, error) {
	out := map[string]any{}
	for k, v := range c.fields {
		out[k] = v
	}
	out["plugins"] = c.plugins
	b, err := json.MarshalIndent(out, "", "  ")
	return append(b, '\n'), err
}

func pluginType(p map[string]json.RawMessage) string {
	var t string
	_ = json.Unmarshal(p["type"], &t)
	return t
}

// withoutUs returns the plugins other than ours.
func withoutUs(ps []map[string]json.RawMessage) []map[string]json.RawMessage {
	return slices.DeleteFunc(slices.Clone(ps), func(p map[string]json.RawMessage) bool { return pluginType(p) == PluginType })
}

func (in *Installer) entry() (map[string]json.RawMessage, error) {
	e := map[string]json.RawMessage{"type": json.RawMessage(`"` + PluginType + `"`)}
	for k, v := range in.cfg.Plugin {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("plugin setting %s: %w", k, err)
		}
		e[k] = b
	}
	return e, nil
}

// chain inserts the plugin last in the primary configuration.
func (in *Installer) chain() (string, error) {
	path, err := in.Primary()
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	isList := filepath.Ext(path) == ".conflist"
	c, err := parse(data, isList)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	ours, err := in.entry()
	if err != nil {
		return "", err
	}
	c.plugins = append(withoutUs(c.plugins), ours)
	out, err := c.marshal()
	if err != nil {
		return "", err
	}
	target := path
	if !isList {
		target = strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
	}
	if isList && sameJSON(data, out) {
		return target, nil
	}
	if err := writeAtomic(target, 0o644, func(w io.Writer) error { _, err := w.Write(out); return err }); err != nil {
		return "", err
	}
	if target != path {
		if err := os.Remove(path); err != nil {
			return "", fmt.Errorf("removing %s after converting it to %s: %w", path, target, err)
		}
	}
	in.log.Info("plugin chained", "file", target, "plugins", len(c.plugins))
	return target, nil
}

// sameJSON reports whether a and b hold the same JSON value.
func sameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

// Uninstall removes the plugin from the primary configuration (the other
// plugins stay, in order) and its binary. A configuration without the
// plugin is left untouched.
func (in *Installer) Uninstall() error {
	path, err := in.Primary()
	if err != nil && !errors.Is(err, ErrNoPrimary) {
		return err
	}
	if err == nil {
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		c, err := parse(data, filepath.Ext(path) == ".conflist")
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if rest := withoutUs(c.plugins); len(rest) != len(c.plugins) && len(rest) > 0 {
			c.plugins = rest
			out, err := c.marshal()
			if err != nil {
				return err
			}
			if err := writeAtomic(path, 0o644, func(w io.Writer) error { _, err := w.Write(out); return err }); err != nil {
				return err
			}
			in.log.Info("plugin removed", "file", path)
		}
	}
	if err := os.Remove(filepath.Join(in.cfg.BinDir, PluginType)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Watch installs the plugin once a primary configuration exists, then
// checks every Interval that it is still chained and chains it again when
// the primary CNI rewrote or replaced the file, until ctx ends.
func (in *Installer) Watch(ctx context.Context, installed func(path string)) error {
	t := time.NewTicker(in.cfg.Interval)
	defer t.Stop()
	var last string
	waiting, copied := false, false
	for {
		var (
			path string
			err  error
		)
		if !copied {
			err = in.copyBinary()
			copied = err == nil
		}
		if err == nil {
			path, err = in.chain()
		}
		switch {
		case errors.Is(err, ErrNoPrimary):
			if !waiting {
				in.log.Info("waiting for the primary CNI's configuration", "dir", in.cfg.ConfDir)
				waiting = true
			}
		case err != nil:
			in.log.Error("install failed", "err", err)
		case path != last:
			waiting = false
			last = path
			if installed != nil {
				installed(path)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// writeAtomic writes path through a temporary file in the same directory
// and a rename, so a reader sees the old or the new file, never part.
func writeAtomic(path string, mode os.FileMode, fill func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := fill(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
