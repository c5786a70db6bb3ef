package logstream

import (
	"net/netip"
	"strings"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// flagDeny is the response flag of a connection or request denied by policy
// (telemetry.FlagDeny).
const flagDeny = "DENY"

// VerdictOf classifies a record: DENY when a policy refused it (response
// flag DENY), ERROR when it failed otherwise (an error or another response
// flag), ALLOW when it went through.
func VerdictOf(rec *accesslog.Record) logsv1.Verdict {
	switch {
	case hasFlag(rec.ResponseFlags, flagDeny):
		return logsv1.Verdict_DENY
	case rec.Err != nil, rec.ResponseFlags != "" && rec.ResponseFlags != "-":
		return logsv1.Verdict_ERROR
	}
	return logsv1.Verdict_ALLOW
}

func hasFlag(flags, f string) bool {
	for flags != "" {
		var one string
		one, flags, _ = strings.Cut(flags, ",")
		if one == f {
			return true
		}
	}
	return false
}

// Identity adds spiffe:// to an identity that lacks it, as records print
// identities.
func Identity(id string) string {
	if id == "" || strings.HasPrefix(id, "spiffe://") {
		return id
	}
	return "spiffe://" + id
}

func addr(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// toProto converts a kept record. apps names the workload (Deployment) of
// an address when the proxy knows it; nil: unknown.
func toProto(e *entry, kind logsv1.ProxyKind, proxy string, apps func(netip.Addr) string) *logsv1.Record {
	r := &e.rec
	out := &logsv1.Record{
		Time:      timestamppb.New(e.time),
		ProxyKind: kind,
		Proxy:     proxy,
		Seq:       e.seq,
		Source:    &logsv1.Endpoint{Addr: addr(r.SrcAddr), Workload: r.SrcWorkload, Namespace: r.SrcNamespace, Identity: Identity(r.SrcIdentity)},
		Destination: &logsv1.Endpoint{
			Addr: addr(r.DstAddr), Workload: r.DstWorkload, Namespace: r.DstNamespace, Identity: Identity(r.DstIdentity),
		},
		DstHboneAddr:  addr(r.DstHBONEAddr),
		DstService:    r.DstService,
		Verdict:       VerdictOf(r),
		BytesSent:     r.BytesSent,
		BytesRecv:     r.BytesRecv,
		Duration:      durationpb.New(e.dur),
		ResponseFlags: r.ResponseFlags,
		Policy:        r.Policy,
	}
	if !r.Start.IsZero() {
		out.Start = timestamppb.New(r.Start)
	}
	switch r.Direction {
	case accesslog.Inbound:
		out.Direction = logsv1.Direction_INBOUND
	case accesslog.Outbound:
		out.Direction = logsv1.Direction_OUTBOUND
	}
	if r.Err != nil {
		out.Error = r.Err.Error()
	}
	if apps != nil {
		if r.SrcAddr.IsValid() {
			out.Source.App = apps(r.SrcAddr.Addr())
		}
		if r.DstAddr.IsValid() {
			out.Destination.App = apps(r.DstAddr.Addr())
		}
	}
	if r.Method != "" {
		out.Http = &logsv1.HTTP{
			Method: r.Method, Path: r.Path, Authority: r.Authority, Protocol: r.Protocol,
			Status: uint32(max(r.ResponseCode, 0)), UpstreamHost: addr(r.UpstreamHost), TraceId: r.TraceID,
		}
	}
	return out
}
