package proxy

import (
	"context"
	"net"
	"net/http"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/ztunnel/capture"
)

// dialHBONE opens a tunnel for the local workload src (whose client
// connected from clientAddr) to authority, through the HBONE server at
// hboneAddr that must present one of ids. svc is the service addressed,
// if any: its hostname goes in the forwarded header.
func (p *Proxy) dialHBONE(ctx context.Context, src *state.Workload, clientAddr netip.AddrPort, svc *state.Service, authority, hboneAddr netip.AddrPort, ids []spiffeid.ID) (net.Conn, error) {
	forwarded := `for="` + clientAddr.String() + `"`
	if svc != nil {
		forwarded += ";host=" + svc.Hostname
	}
	h := http.Header{
		"Forwarded": {forwarded},
		"Baggage":   {baggage(src)},
	}
	return p.dialTunnel(ctx, src, hbone.Target{ // over TCP or QUIC (quic.go)
		Addr:       hboneAddr,
		Authority:  authority.String(),
		SourceID:   src.ID,
		DestIDs:    ids,
		SourceAddr: src.Addrs[0],
		Header:     h,
	})
}

// sans returns the service's subject_alt_names that are SPIFFE IDs.
func sans(svc *state.Service) []spiffeid.ID {
	var ids []spiffeid.ID
	for _, san := range svc.SubjectAltNames {
		if id, err := spiffeid.FromString(san); err == nil {
			ids = append(ids, id)
		}
	}
	return ids
}

// baggage describes the source workload as Istio's ztunnel does.
func baggage(w *state.Workload) string {
	kind := "pod"
	switch w.WorkloadType {
	case workloadapi.WorkloadType_DEPLOYMENT:
		kind = "deployment"
	case workloadapi.WorkloadType_JOB:
		kind = "job"
	case workloadapi.WorkloadType_CRONJOB:
		kind = "cronjob"
	}
	return "k8s.namespace.name=" + w.Namespace +
		",k8s." + kind + ".name=" + w.WorkloadName +
		",service.name=" + w.CanonicalName +
		",service.version=" + w.CanonicalRevision
}

// dialDirect dials addr, for the local pod whose address is pod, from the
// local address from, as the application itself would have.
func (p *Proxy) dialDirect(ctx context.Context, pod, from netip.Addr, addr netip.AddrPort) (net.Conn, error) {
	c, err := p.dialApp(ctx, pod, from, addr)
	if err != nil {
		p.dialTimedOut(ctx, err)
		return nil, err
	}
	p.applySocketOptions(c)
	return c, nil
}

// dialApp is dialDirect's dial, bounded by Config.ConnectTimeout.
func (p *Proxy) dialApp(ctx context.Context, pod, from netip.Addr, addr netip.AddrPort) (net.Conn, error) {
	if p.cfg.DialPod != nil {
		ctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
		defer cancel()
		return p.cfg.DialPod(ctx, pod, from, addr)
	}
	d := net.Dialer{Timeout: p.cfg.ConnectTimeout, Control: p.cfg.Control}
	if from.IsValid() {
		// The port is picked at connect (unique for the 4-tuple), not at
		// bind: a bind searches the ports TIME_WAIT holds on from.
		d.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
		d.Control = capture.BindNoPort(d.Control)
	}
	return d.DialContext(ctx, "tcp", addr.String())
}
