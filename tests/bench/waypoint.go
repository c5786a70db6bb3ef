package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// WaypointConfig describes a waypoint process started from its binary, as
// the runtime runs the waypoint's pod in local mode: the node's token with
// impersonation, so that the CA grants the waypoint's ServiceAccount to
// that node.
type WaypointConfig struct {
	// Bin is the waypoint binary.
	Bin string
	// Dir receives its log.
	Dir string
	// Namespace and Gateway name its Gateway; it runs as the
	// ServiceAccount named after the Gateway.
	Namespace, Gateway string
	// PodName and PodIP are its pod's; HBONE listens on PodIP:15008, the
	// admin, metrics and readiness servers on 127.0.0.1 of its namespace.
	PodName string
	PodIP   netip.Addr
	// XDSAddress is istiod-lite's gRPC address (TLS) as seen from the
	// waypoint; CARoot the PEM file of istiod-lite's root; Token its node's
	// token.
	XDSAddress, CARoot, Token string
	// LogLevel is --log-level; default info (one access log line per
	// request).
	LogLevel string
	// Start starts the process (inside the pod's namespace); nil: here.
	Start func(*exec.Cmd) error
	// Get fetches a URL from where the process runs; it answers the body
	// of a 200.
	Get func(ctx context.Context, url string) ([]byte, error)
}

// Waypoint addresses inside the waypoint's namespace.
const (
	WaypointMetrics   = "127.0.0.1:15020"
	WaypointReadiness = "127.0.0.1:15021"
	WaypointAdmin     = "127.0.0.1:15000"
)

// Waypoint is a running waypoint process.
type Waypoint struct {
	cfg   WaypointConfig
	procs Processes
	Proc  *Process
}

// StartWaypoint starts the waypoint and returns once it is ready (its
// certificate and its first xDS push are in).
func StartWaypoint(ctx context.Context, cfg WaypointConfig) (*Waypoint, error) {
	if cfg.LogLevel == "" {
		cfg.LogLevel = "info"
	}
	w := &Waypoint{cfg: cfg}
	var err error
	log := filepath.Join(cfg.Dir, "waypoint.log")
	w.Proc, err = w.procs.StartWith(cfg.Start, "waypoint", cfg.Bin, log,
		"--namespace", cfg.Namespace, "--gateway", cfg.Gateway,
		"--pod-name", cfg.PodName, "--pod-ip", cfg.PodIP.String(),
		"--xds-address", cfg.XDSAddress, "--ca-root", cfg.CARoot, "--token", cfg.Token, "--impersonate",
		"--hbone-addr", netip.AddrPortFrom(cfg.PodIP, 15008).String(),
		"--admin-addr", WaypointAdmin, "--metrics-addr", WaypointMetrics, "--readiness-addr", WaypointReadiness,
		"--log-level", cfg.LogLevel)
	if err != nil {
		return nil, err
	}
	if err := WaitFor(ctx, 20*time.Second, "waypoint ready", func() bool {
		select {
		case <-w.Proc.Exited():
			return true
		default:
		}
		_, err := cfg.Get(ctx, "http://"+WaypointReadiness+"/healthz/ready")
		return err == nil
	}); err != nil {
		w.Stop()
		return nil, fmt.Errorf("%w (log %s)", err, log)
	}
	select {
	case <-w.Proc.Exited():
		return nil, fmt.Errorf("waypoint exited before ready: %v (log %s)", w.Proc.err, log)
	default:
	}
	return w, nil
}

// Stop stops the waypoint.
func (w *Waypoint) Stop() { w.procs.Stop() }

// Requests is the waypoint's istio_requests_total, all series summed.
func (w *Waypoint) Requests(ctx context.Context) (float64, error) {
	b, err := w.cfg.Get(ctx, "http://"+WaypointMetrics+"/metrics")
	if err != nil {
		return 0, err
	}
	return SumMetric(b, "istio_requests_total")
}

// ConfigDump is the waypoint's admin /config_dump (JSON): among the rest,
// the Services' routes it holds ("waypointRoutes", in the order it tries
// them).
func (w *Waypoint) ConfigDump(ctx context.Context) ([]byte, error) {
	return w.cfg.Get(ctx, "http://"+WaypointAdmin+"/config_dump")
}

// SumMetric sums every sample of the metric name in a Prometheus text
// exposition.
func SumMetric(text []byte, name string) (float64, error) {
	var sum float64
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		if rest[0] == '{' {
			i := strings.LastIndexByte(rest, '}')
			if i < 0 {
				return 0, fmt.Errorf("malformed sample %q", line)
			}
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, fmt.Errorf("sample without a value %q", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, fmt.Errorf("sample %q: %w", line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}
