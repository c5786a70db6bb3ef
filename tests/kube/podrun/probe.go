package podrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probe runs c's readiness probe until ctx ends (the container exited or
// the pod stops), flipping c.ready as the kubelet does: after
// successThreshold successes in a row, or failureThreshold failures.
func (p *pod) probe(ctx context.Context, c *container) {
	pr := c.spec.ReadinessProbe
	if pr == nil {
		return
	}
	period := seconds(pr.PeriodSeconds, 10)
	timeout := seconds(pr.TimeoutSeconds, 1)
	succ, fail := threshold(pr.SuccessThreshold), threshold(pr.FailureThreshold)
	log := p.log.With("container", c.spec.Name)
	t := time.NewTimer(time.Duration(pr.InitialDelaySeconds) * time.Second)
	defer t.Stop()
	var okRun, failRun int32
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := p.check(pctx, c.spec, pr)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			okRun, failRun = okRun+1, 0
		} else {
			okRun, failRun = 0, failRun+1
		}
		p.mu.Lock()
		was := c.ready
		switch {
		case !c.ready && okRun >= succ:
			c.ready = true
		case c.ready && failRun >= fail:
			c.ready = false
		}
		now := c.ready
		p.mu.Unlock()
		if was != now {
			log.Info("readiness changed", "ready", now, "err", err)
			p.changed()
		}
		t.Reset(period)
	}
}

func seconds(v, def int32) time.Duration {
	if v <= 0 {
		v = def
	}
	return time.Duration(v) * time.Second
}

func threshold(v int32) int32 {
	if v <= 0 {
		return 1
	}
	return v
}

// check runs one probe from inside the pod's network namespace: an HTTP
// GET must answer 200-399, a TCP connection must be accepted.
func (p *pod) check(ctx context.Context, ctr corev1.Container, pr *corev1.Probe) error {
	switch {
	case pr.HTTPGet != nil:
		g := pr.HTTPGet
		if g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP {
			return fmt.Errorf("probe scheme %s is not supported", g.Scheme)
		}
		addr, err := p.probeAddr(ctr, g.Host, g.Port)
		if err != nil {
			return err
		}
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return p.sb.NS.Dial(ctx, network, addr.String())
			},
			DisableKeepAlives: true,
		}
		defer tr.CloseIdleConnections()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr.String()+g.Path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "kube-probe/podrun")
		for _, h := range g.HTTPHeaders {
			req.Header.Set(h.Name, h.Value)
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe answered %d", resp.StatusCode)
		}
		return nil
	case pr.TCPSocket != nil:
		addr, err := p.probeAddr(ctr, pr.TCPSocket.Host, pr.TCPSocket.Port)
		if err != nil {
			return err
		}
		conn, err := p.sb.NS.Dial(ctx, "tcp", addr.String())
		if err != nil {
			return err
		}
		return conn.Close()
	default:
		return errors.New("only httpGet and tcpSocket readiness probes are supported")
	}
}

// probeAddr is the probe's target: host (default the pod's IP) and the
// port, a number or the name of one of the container's ports.
func (p *pod) probeAddr(ctr corev1.Container, host string, port intstr.IntOrString) (netip.AddrPort, error) {
	ip := p.sb.IPs[0]
	if host != "" {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("probe host %q: %w", host, err)
		}
		ip = a
	}
	n, err := probePort(ctr, port)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(ip, n), nil
}

func probePort(ctr corev1.Container, port intstr.IntOrString) (uint16, error) {
	if port.Type == intstr.Int {
		if port.IntVal <= 0 || port.IntVal > 65535 {
			return 0, fmt.Errorf("probe port %d is out of range", port.IntVal)
		}
		return uint16(port.IntVal), nil
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil && n > 0 && n <= 65535 {
		return uint16(n), nil
	}
	for _, cp := range ctr.Ports {
		if cp.Name == port.StrVal {
			return uint16(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("probe port %q is not a port of the container", port.StrVal)
}
