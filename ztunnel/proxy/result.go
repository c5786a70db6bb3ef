package proxy

import (
	"context"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
)

// connResult owns one connection's access log record and TCP metrics, as
// Istio's ConnectionResult (src/proxy/metrics.rs) does. A hop creates it
// once it has classified the connection (outboundResult, inboundResult),
// fills it in as it learns where the connection goes and who is at each
// end, opens the metrics once their labels are final (open), adds the
// bytes relayed, and finishes it exactly once: finish closes the metrics
// and writes the record.
//
// The metrics' labels are fixed when they are opened (as Istio's): a
// response flag set later, when a policy change ends an established
// connection, reaches only the record.
type connResult struct {
	metrics *telemetry.Metrics
	log     *accesslog.Logger
	rec     accesslog.Record
	labels  telemetry.Labels
	m       *telemetry.Conn // nil until open
	done    bool
	live    *connTable // lists the connection from open to finish (conns.go)
	lc      liveConn   // what live lists
	shard   uint8
	listed  bool
}

// outboundResult starts the result of a connection of the local workload
// src from client (reporter: source).
func (p *Proxy) outboundResult(src *state.Workload, client netip.AddrPort) *connResult {
	r := p.newResult(accesslog.Outbound, telemetry.ReporterSource, client)
	r.setSourceIdentity(src.ID.String())
	r.setSource(src)
	return r
}

// inboundResult starts the result of a connection from client, whose
// identity peer is empty for plaintext, to a local workload (reporter:
// destination). security is the connection_security_policy.
func (p *Proxy) inboundResult(client netip.AddrPort, peer, security string) *connResult {
	r := p.newResult(accesslog.Inbound, telemetry.ReporterDestination, client)
	r.setSourceIdentity(peer)
	r.labels.ConnectionSecurityPolicy = security
	return r
}

func (p *Proxy) newResult(direction, reporter string, client netip.AddrPort) *connResult {
	return &connResult{
		metrics: p.cfg.Metrics,
		log:     p.cfg.AccessLog,
		rec:     accesslog.Record{Direction: direction, Start: time.Now(), SrcAddr: client},
		labels:  telemetry.Labels{Reporter: reporter, RequestProtocol: telemetry.ProtocolTCP},
		live:    &p.live,
	}
}

func (r *connResult) setSourceIdentity(id string) {
	r.rec.SrcIdentity = id
	r.labels.SourcePrincipal = id
}

// setSource names the source workload.
func (r *connResult) setSource(w *state.Workload) {
	r.rec.SrcWorkload, r.rec.SrcNamespace = w.Name, w.Namespace
	r.labels.SetSource(w)
}

// setService names the destination service.
func (r *connResult) setService(svc *state.Service) {
	r.rec.DstService = svc.Hostname
	r.labels.SetService(svc)
}

// setDestination names the destination workload.
func (r *connResult) setDestination(w *state.Workload) {
	r.rec.DstWorkload, r.rec.DstNamespace = w.Name, w.Namespace
	r.labels.SetDestination(w)
}

// setDestinationIdentity is the identity the destination presented (or,
// inbound, has).
func (r *connResult) setDestinationIdentity(id spiffeid.ID) {
	r.rec.DstIdentity = id.String()
	r.labels.DestinationPrincipal = id.String()
}

// setDestinationAddr is where the connection was sent (dst.addr) and,
// when tunnelled, the HBONE :authority (dst.hbone_addr).
func (r *connResult) setDestinationAddr(addr, hbone netip.AddrPort) {
	r.rec.DstAddr, r.rec.DstHBONEAddr = addr, hbone
}

// setTransport names the HBONE transport (TransportTCP, TransportQUIC) in
// the record; "" (a direct connection) leaves it out.
func (r *connResult) setTransport(transport string) { r.rec.Transport = transport }

// setSecurity is the connection_security_policy: telemetry.PolicyMutualTLS
// or PolicyUnknown.
func (r *connResult) setSecurity(policy string) { r.labels.ConnectionSecurityPolicy = policy }

// setFlags sets the response flags (telemetry.FlagConnect, FlagDeny).
func (r *connResult) setFlags(flags string) { r.labels.ResponseFlags = flags }

// setPolicy names the policy that decided the connection.
func (r *connResult) setPolicy(name string) { r.rec.Policy = name }

// open counts the connection opened, under the labels as they are now,
// and lists it among the open connections (Proxy.Connections) with its
// addresses as they are now.
func (r *connResult) open() {
	if r.m == nil {
		r.m = r.metrics.Open(&r.labels)
		r.live.add(r)
	}
}

// relayed adds the bytes carried: toServer from the client to the server,
// toClient back. As Istio counts them, the metrics are the request's
// (received) and the response's (sent) bytes at either end, and the
// record's bytes_sent / bytes_recv are the local workload's: what the
// client sent and received on outbound, what the server sent and received
// on inbound.
func (r *connResult) relayed(toServer, toClient int64) {
	r.m.AddReceived(toServer)
	r.m.AddSent(toClient)
	if r.rec.Direction == accesslog.Inbound {
		r.rec.BytesSent, r.rec.BytesRecv = toClient, toServer
	} else {
		r.rec.BytesSent, r.rec.BytesRecv = toServer, toClient
	}
}

// finish ends the connection with err (nil: it ended normally): it counts
// it closed (opened too, if it failed before open) and writes the record.
// Only the first finish or discard has an effect.
func (r *connResult) finish(ctx context.Context, err error) {
	if r.done {
		return
	}
	r.done = true
	if r.m == nil { // failed before open: counted, never listed
		r.m = r.metrics.Open(&r.labels)
	}
	r.live.remove(r)
	r.m.Close()
	r.rec.Err = err
	r.rec.ResponseFlags = r.labels.ResponseFlags
	r.rec.Duration = time.Since(r.rec.Start)
	r.log.Log(ctx, &r.rec)
}

// discard counts the opened connection closed and writes no record: the
// proxy was closing and never carried it.
func (r *connResult) discard() {
	if r.done {
		return
	}
	r.done = true
	r.live.remove(r)
	r.m.Close()
}
