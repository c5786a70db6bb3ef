package install

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const calico = `{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "datastore_type": "kubernetes", "ipam": {"type": "calico-ipam"}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}`

// setup makes a node's directories: a plugin binary to install, an empty
// bin directory and a configuration directory holding files.
func setup(t *testing.T, files map[string]string) (*Installer, Config) {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{
		PluginBinary: filepath.Join(dir, "image", "ztunnel-cni"),
		BinDir:       filepath.Join(dir, "opt", "cni", "bin"),
		ConfDir:      filepath.Join(dir, "etc", "cni", "net.d"),
		Plugin:       map[string]any{"zdsSocket": "/var/run/ztunnel/zds.sock"},
		Interval:     10 * time.Millisecond,
		Log:          slog.New(slog.DiscardHandler),
	}
	for _, d := range []string{filepath.Dir(cfg.PluginBinary), cfg.ConfDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(cfg.PluginBinary, []byte("plugin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(cfg.ConfDir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return New(cfg), cfg
}

// pluginTypes lists the plugin types of a conflist file.
func pluginTypes(t *testing.T, path string) []string {
	t.Helper()
	var c struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var types []string
	for _, p := range c.Plugins {
		types = append(types, p.Type)
	}
	return types
}

func readJSON(t *testing.T, path string) any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestInstallUninstall installs into a node whose configuration holds
// other plugins: ours is chained last and the others stay, in order, with
// their settings; uninstall gives back the same configuration.
func TestInstallUninstall(t *testing.T) {
	tests := []struct {
		name      string
		files     map[string]string
		wantFile  string
		wantTypes []string
		// wantAfter is the configuration after uninstall, by file name.
		wantAfter map[string]string
	}{
		{
			name:      "conflist of calico, bandwidth, portmap",
			files:     map[string]string{"10-calico.conflist": calico},
			wantFile:  "10-calico.conflist",
			wantTypes: []string{"calico", "bandwidth", "portmap", PluginType},
			wantAfter: map[string]string{"10-calico.conflist": calico},
		},
		{
			name: "first of several files, others untouched",
			files: map[string]string{
				"05-cilium.conflist": `{"cniVersion":"1.0.0","name":"cilium","plugins":[{"type":"cilium-cni"}]}`,
				"10-calico.conflist": calico,
			},
			wantFile:  "05-cilium.conflist",
			wantTypes: []string{"cilium-cni", PluginType},
			wantAfter: map[string]string{
				"05-cilium.conflist": `{"cniVersion":"1.0.0","name":"cilium","plugins":[{"type":"cilium-cni"}]}`,
				"10-calico.conflist": calico,
			},
		},
		{
			name:      "already chained (a restarted installer): one entry, not two",
			files:     map[string]string{"10-kindnet.conflist": `{"cniVersion":"0.3.1","name":"kindnet","plugins":[{"type":"ptp"},{"type":"portmap"},{"type":"ztunnel-cni","zdsSocket":"/old"}]}`},
			wantFile:  "10-kindnet.conflist",
			wantTypes: []string{"ptp", "portmap", PluginType},
			wantAfter: map[string]string{"10-kindnet.conflist": `{"cniVersion":"0.3.1","name":"kindnet","plugins":[{"type":"ptp"},{"type":"portmap"}]}`},
		},
		{
			name:      "single-plugin .conf becomes a .conflist",
			files:     map[string]string{"10-flannel.conf": `{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"isDefaultGateway":true}}`},
			wantFile:  "10-flannel.conflist",
			wantTypes: []string{"flannel", PluginType},
			wantAfter: map[string]string{"10-flannel.conflist": `{"cniVersion":"0.3.1","name":"cbr0","plugins":[{"type":"flannel","delegate":{"isDefaultGateway":true}}]}`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in, cfg := setup(t, tc.files)
			got, err := in.Install()
			if err != nil {
				t.Fatalf("Install() = %v", err)
			}
			if want := filepath.Join(cfg.ConfDir, tc.wantFile); got != want {
				t.Errorf("Install() = %s, want %s", got, want)
			}
			if diff := cmp.Diff(tc.wantTypes, pluginTypes(t, got)); diff != "" {
				t.Errorf("plugins after install (-want +got):\n%s", diff)
			}
			if b, err := os.ReadFile(filepath.Join(cfg.BinDir, PluginType)); err != nil || string(b) != "plugin" {
				t.Errorf("installed binary = %q, %v; want the plugin", b, err)
			}
			// Install again: nothing changes.
			before, _ := os.ReadFile(got)
			if _, err := in.Install(); err != nil {
				t.Fatal(err)
			}
			if after, _ := os.ReadFile(got); string(after) != string(before) {
				t.Errorf("second Install rewrote the file:\n%s\nwant\n%s", after, before)
			}

			if err := in.Uninstall(); err != nil {
				t.Fatalf("Uninstall() = %v", err)
			}
			var wantNames []string
			for name, want := range tc.wantAfter {
				wantNames = append(wantNames, name)
				var w any
				_ = json.Unmarshal([]byte(want), &w)
				if diff := cmp.Diff(w, readJSON(t, filepath.Join(cfg.ConfDir, name))); diff != "" {
					t.Errorf("%s after uninstall (-want +got):\n%s", name, diff)
				}
			}
			if diff := cmp.Diff(wantNames, dirNames(t, cfg.ConfDir), sortStrings); diff != "" {
				t.Errorf("files after uninstall (-want +got):\n%s", diff)
			}
			if _, err := os.Stat(filepath.Join(cfg.BinDir, PluginType)); !os.IsNotExist(err) {
				t.Errorf("plugin binary after uninstall: stat = %v, want it removed", err)
			}
		})
	}
}

var sortStrings = cmp.Transformer("sort", func(in []string) []string {
	out := append([]string(nil), in...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
})

// TestInstallWithoutPrimary: with no network configuration there is
// nothing to chain into; Install says so and writes no file (a node is
// never given a network of ours).
func TestInstallWithoutPrimary(t *testing.T) {
	in, cfg := setup(t, map[string]string{"README": "not a network"})
	if _, err := in.Install(); err == nil {
		t.Fatal("Install() with no configuration = nil error, want ErrNoPrimary")
	}
	if diff := cmp.Diff([]string{"README"}, dirNames(t, cfg.ConfDir)); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}
}

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestWatch: the installer waits for the primary CNI's configuration,
// chains into it, and chains again when the primary CNI rewrites the file
// without our plugin or replaces it with another.
func TestWatch(t *testing.T) {
	in, cfg := setup(t, nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = in.Watch(ctx, nil) }()
	defer func() { cancel(); <-done }()

	primary := filepath.Join(cfg.ConfDir, "10-calico.conflist")
	chained := func(path string, want ...string) func() bool {
		return func() bool {
			if _, err := os.Stat(path); err != nil {
				return false
			}
			return cmp.Equal(want, pluginTypes(t, path))
		}
	}
	time.Sleep(30 * time.Millisecond) // a few checks with no primary
	if names := dirNames(t, cfg.ConfDir); len(names) != 0 {
		t.Fatalf("installer wrote %v before the primary CNI wrote its configuration", names)
	}
	if err := os.WriteFile(primary, []byte(calico), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the plugin chained into calico's file", chained(primary, "calico", "bandwidth", "portmap", PluginType))

	// The primary CNI rewrites its file (as calico-node does on start).
	if err := os.WriteFile(primary, []byte(calico), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the plugin chained again after a rewrite", chained(primary, "calico", "bandwidth", "portmap", PluginType))

	// Another CNI's file now sorts first.
	other := filepath.Join(cfg.ConfDir, "05-cilium.conflist")
	if err := os.WriteFile(other, []byte(`{"cniVersion":"1.0.0","name":"cilium","plugins":[{"type":"cilium-cni"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the plugin chained into the new first file", chained(other, "cilium-cni", PluginType))
}

// TestDaemonSetGone asks an API server (a TLS test server) whether the
// DaemonSet is being deleted.
func TestDaemonSetGone(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   bool
	}{
		{"present: rolling update", 200, `{"metadata":{"name":"ztunnel"}}`, false},
		{"being deleted", 200, `{"metadata":{"name":"ztunnel","deletionTimestamp":"2026-01-01T00:00:00Z"}}`, true},
		{"deleted", 404, `{"kind":"Status","code":404}`, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/apis/apps/v1/namespaces/istio-system/daemonsets/ztunnel" || r.Header.Get("Authorization") != "Bearer tok" {
					http.Error(w, "unexpected "+r.URL.Path+" "+r.Header.Get("Authorization"), http.StatusForbidden)
					return
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			sa := t.TempDir()
			caPEM := pemCert(srv.Certificate().Raw)
			if err := os.WriteFile(filepath.Join(sa, "ca.crt"), caPEM, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(sa, "token"), []byte("tok\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := daemonSetGone(t.Context(), srv.URL, sa, "istio-system", "ztunnel")
			if err != nil || got != tc.want {
				t.Errorf("daemonSetGone() = %v, %v; want %v, nil", got, err, tc.want)
			}
		})
	}
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
