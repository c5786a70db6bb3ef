package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netns"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/ambient-go/mesh/ztunnel/zds"
)

var plugin string // path of the built binary

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ztunnel-cni-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	plugin = filepath.Join(dir, "ztunnel-cni")
	out, err := exec.Command("go", "build", "-o", plugin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building the plugin: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	const msg = "needs root to create a network namespace for the pod; run as root"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: not skipping)")
	}
	t.Skip(msg)
}

// podNetns creates a named network namespace, as a runtime does for a pod
// sandbox, and removes it in t.Cleanup.
func podNetns(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("ztcni%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		if serr := netns.Set(orig); serr != nil {
			errc <- errors.Join(err, serr) // the thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("creating netns: %v", err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("removing netns %s: %v", name, err)
		}
	})
	return "/var/run/netns/" + name
}

// handler records requests and checks that the descriptor it receives is
// the pod's netns.
type handler struct {
	mu   sync.Mutex
	adds []zds.Pod
	dels []zds.Pod
	fail error
	errs []error
}

func (h *handler) AddPod(_ context.Context, p zds.Pod, ns *os.File) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var got, want unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &got); err != nil {
		h.errs = append(h.errs, err)
	} else if err := unix.Stat(p.Netns, &want); err != nil {
		h.errs = append(h.errs, err)
	} else if got.Ino != want.Ino || got.Dev != want.Dev {
		h.errs = append(h.errs, fmt.Errorf("descriptor is not %s", p.Netns))
	}
	h.adds = append(h.adds, p)
	return h.fail
}

func (h *handler) setFail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fail = err
}

// got returns the pods added and deleted so far.
func (h *handler) got() (adds, dels []zds.Pod) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]zds.Pod(nil), h.adds...), append([]zds.Pod(nil), h.dels...)
}

func (h *handler) DelPod(_ context.Context, p zds.Pod) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dels = append(h.dels, p)
	return nil
}

type env struct {
	socket, state string
	h             *handler
}

func startServer(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{socket: filepath.Join(dir, "zds.sock"), state: filepath.Join(dir, "pods"), h: &handler{}}
	s := &zds.Server{Socket: e.socket, Handler: e.h}
	l, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		e.h.mu.Lock()
		defer e.h.mu.Unlock()
		for _, err := range e.h.errs {
			t.Errorf("handler: %v", err)
		}
	})
	return e
}

const prevResult100 = `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"%s"}],` +
	`"ips":[{"address":"198.18.7.10/24","gateway":"198.18.7.1","interface":0},{"address":"fd00::a/64","interface":0}]}`

func config(e *env, version, prev string) string {
	c := fmt.Sprintf(`{"cniVersion":%q,"name":"pods","type":"ztunnel-cni","zdsSocket":%q,"podStateDir":%q`, version, e.socket, e.state)
	if prev != "" {
		c += `,"prevResult":` + prev
	}
	return c + "}"
}

// run invokes the plugin as a runtime does: CNI_* environment, config on
// stdin, result on stdout.
func run(t *testing.T, command, netnsPath, args, stdin string) (stdout string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, plugin)
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=c0ffee",
		"CNI_NETNS=" + netnsPath,
		"CNI_IFNAME=eth0",
		"CNI_ARGS=" + args,
		"CNI_PATH=" + filepath.Dir(plugin),
	}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if err != nil {
		err = fmt.Errorf("%w: stdout %s stderr %s", err, out.String(), errb.String())
	}
	return out.String(), err
}

// addrs compares netip.Addr values.
var addrs = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

const podArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=u-123;K8S_POD_INFRA_CONTAINER_ID=c0ffee"

func wantPod(netnsPath string) zds.Pod {
	return zds.Pod{
		UID: "u-123", Name: "cart-0", Namespace: "shop", Netns: netnsPath,
		IPs: []netip.Addr{netip.MustParseAddr("198.18.7.10"), netip.MustParseAddr("fd00::a")},
	}
}

func records(t *testing.T, dir string) []zds.Pod {
	t.Helper()
	pods, err := zds.Records(dir)
	if err != nil {
		t.Fatal(err)
	}
	return pods
}

func jsonEqual(t *testing.T, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("output %q: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(w, g); diff != "" {
		t.Errorf("output (-want +got):\n%s", diff)
	}
}

func TestAddDel(t *testing.T) {
	requireRoot(t)
	e := startServer(t)
	ns := podNetns(t)
	prev := fmt.Sprintf(prevResult100, ns)

	out, err := run(t, "ADD", ns, podArgs, config(e, "1.0.0", prev))
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	jsonEqual(t, out, prev)
	adds, _ := e.h.got()
	if diff := cmp.Diff([]zds.Pod{wantPod(ns)}, adds, addrs); diff != "" {
		t.Errorf("ztunnel received (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]zds.Pod{wantPod(ns)}, records(t, e.state), addrs); diff != "" {
		t.Errorf("records after ADD (-want +got):\n%s", diff)
	}

	if _, err := run(t, "CHECK", ns, podArgs, config(e, "1.0.0", prev)); err != nil {
		t.Errorf("CHECK: %v", err)
	}

	// DEL carries no prevResult, and may come twice.
	for i := range 2 {
		if _, err := run(t, "DEL", ns, podArgs, config(e, "1.0.0", "")); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if _, dels := e.h.got(); len(dels) != 2 || dels[0].UID != "u-123" {
		t.Errorf("ztunnel received DEL %+v, want u-123 twice", dels)
	}
	if got := records(t, e.state); len(got) != 0 {
		t.Errorf("records after DEL = %v, want none", got)
	}
}

func TestAddConvertsToConfigVersion(t *testing.T) {
	requireRoot(t)
	e := startServer(t)
	ns := podNetns(t)
	prev := `{"cniVersion":"0.4.0","interfaces":[{"name":"eth0"}],"ips":[{"version":"4","address":"198.18.7.10/24","interface":0}]}`
	out, err := run(t, "ADD", ns, podArgs, config(e, "0.4.0", prev))
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	// The 0.4.0 encoder always writes "dns".
	jsonEqual(t, out, strings.Replace(prev, `{"cniVersion"`, `{"dns":{},"cniVersion"`, 1))
	if adds, _ := e.h.got(); len(adds) != 1 || fmt.Sprint(adds[0].IPs) != "[198.18.7.10]" {
		t.Errorf("ztunnel received %+v, want the pod with 198.18.7.10", adds)
	}
}

func TestAddFails(t *testing.T) {
	requireRoot(t)
	ns := podNetns(t)
	prev := fmt.Sprintf(prevResult100, ns)
	tests := []struct {
		name    string
		setup   func(e *env)
		prev    string
		args    string
		wantMsg string
	}{
		{
			name:    "ztunnel refuses",
			setup:   func(e *env) { e.h.setFail(errors.New("no capture for you")) },
			prev:    prev,
			args:    podArgs,
			wantMsg: "no capture for you",
		},
		{
			name:    "ztunnel is not running",
			setup:   func(e *env) { e.socket = filepath.Join(filepath.Dir(e.socket), "absent.sock") },
			prev:    prev,
			args:    podArgs,
			wantMsg: "not listening",
		},
		{
			name:    "not chained",
			args:    podArgs,
			wantMsg: "no prevResult",
		},
		{
			name:    "bad CNI_ARGS",
			prev:    prev,
			args:    "K8S_POD_NAME=a;FOO=bar",
			wantMsg: "CNI_ARGS",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := startServer(t)
			if tt.setup != nil {
				tt.setup(e)
			}
			out, err := run(t, "ADD", ns, tt.args, config(e, "1.0.0", tt.prev))
			if err == nil {
				t.Fatalf("ADD succeeded: %s", out)
			}
			var cniErr struct {
				Code int    `json:"code"`
				Msg  string `json:"msg"`
			}
			if jerr := json.Unmarshal([]byte(out), &cniErr); jerr != nil || cniErr.Code == 0 {
				t.Fatalf("ADD printed %q, want a CNI error", out)
			}
			if !strings.Contains(cniErr.Msg, tt.wantMsg) {
				t.Errorf("ADD error %q, want it to mention %q", cniErr.Msg, tt.wantMsg)
			}
			if got := records(t, e.state); len(got) != 0 {
				t.Errorf("records after a failed ADD = %v, want none", got)
			}
		})
	}
}

func TestDelWithoutZtunnel(t *testing.T) {
	e := startServer(t)
	if err := zds.WriteRecord(e.state, wantPod("/var/run/netns/gone")); err != nil {
		t.Fatal(err)
	}
	e.socket = filepath.Join(filepath.Dir(e.socket), "absent.sock")
	// The runtime may already have removed the netns: CNI_NETNS is empty.
	if _, err := run(t, "DEL", "", podArgs, config(e, "1.0.0", "")); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if got := records(t, e.state); len(got) != 0 {
		t.Errorf("records after DEL = %v, want none", got)
	}
}

func TestNotAPod(t *testing.T) {
	requireRoot(t)
	e := startServer(t)
	ns := podNetns(t)
	prev := fmt.Sprintf(prevResult100, ns)
	out, err := run(t, "ADD", ns, "IgnoreUnknown=1", config(e, "1.0.0", prev))
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	jsonEqual(t, out, prev)
	if adds, _ := e.h.got(); len(adds) != 0 || len(records(t, e.state)) != 0 {
		t.Errorf("a sandbox without K8S_POD_NAME reached ztunnel: %+v", adds)
	}
}

func TestVersion(t *testing.T) {
	out, err := run(t, "VERSION", "", "", `{"cniVersion":"1.0.0"}`)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(v.SupportedVersions, ","), "1.0.0") {
		t.Errorf("VERSION = %s, want 1.0.0 supported", out)
	}
}
