package proxy

import (
	"cmp"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
)

// Connection is one connection the proxy carries, as the admin server
// lists it (istioctl's ztunnel-config connections columns).
type Connection struct {
	// Workload is the local workload, name.namespace: the source of an
	// outbound connection, the destination of an inbound one.
	Workload string `json:"workload"`
	// Direction is Inbound or Outbound.
	Direction string `json:"direction"`
	// Local is the local workload's end: its socket (outbound) or the
	// address dialed on it (inbound).
	Local string `json:"local"`
	// Remote is the other end: where the connection went (a waypoint's or
	// a ztunnel's 15008, or the destination itself) or came from.
	Remote string `json:"remote"`
	// RemoteTarget is the final destination behind Remote: the HBONE
	// authority (outbound), or the service the client addressed
	// (inbound); empty when there is none.
	RemoteTarget string `json:"remoteTarget"`
	// Protocol is HBONE (over TCP or QUIC) or TCP.
	Protocol string `json:"protocol"`
	// Start is when the proxy accepted the connection.
	Start time.Time `json:"start"`
}

// connShards spreads the open connections over locks so that the data
// path's insert and delete do not contend on one.
const connShards = 32

// connTable holds the open connections. The data path's cost is one map
// insert at open and one delete at finish, each under one shard's lock,
// and the copy of a few fields.
type connTable struct {
	shards [connShards]connShard
}

type connShard struct {
	mu sync.Mutex
	m  map[*connResult]struct{}
	_  [48]byte // one shard per cache line
}

// liveConn is what the table keeps of a connection: the record's values,
// formatted only when listed.
type liveConn struct {
	inbound             bool
	hbone               bool
	name, namespace     string // the local workload
	local, remote, auth netip.AddrPort
	service             string
	start               time.Time
}

// add registers r, whose addresses are final, as open.
func (t *connTable) add(r *connResult) {
	r.lc = r.liveConn() // read by list under the shard's lock, unchanged until remove
	r.shard = uint8(rand.Uint32N(connShards))
	s := &t.shards[r.shard]
	s.mu.Lock()
	if s.m == nil {
		s.m = map[*connResult]struct{}{}
	}
	s.m[r] = struct{}{}
	s.mu.Unlock()
	r.listed = true
}

// remove forgets r.
func (t *connTable) remove(r *connResult) {
	if !r.listed {
		return
	}
	r.listed = false
	s := &t.shards[r.shard]
	s.mu.Lock()
	delete(s.m, r)
	s.mu.Unlock()
}

// list returns the open connections by workload, direction, then start.
func (t *connTable) list() []Connection {
	var out []Connection
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for r := range s.m {
			out = append(out, r.lc.connection())
		}
		s.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b Connection) int {
		return cmp.Or(cmp.Compare(a.Workload, b.Workload), cmp.Compare(a.Direction, b.Direction),
			a.Start.Compare(b.Start), cmp.Compare(a.Local, b.Local))
	})
	return out
}

// Connections lists the connections the proxy carries now.
func (p *Proxy) Connections() []Connection { return p.live.list() }

// liveConn takes what the table keeps from r's record.
func (r *connResult) liveConn() liveConn {
	rec := &r.rec
	c := liveConn{inbound: rec.Direction == accesslog.Inbound, hbone: rec.Transport != "", start: rec.Start}
	if c.inbound {
		c.name, c.namespace = rec.DstWorkload, rec.DstNamespace
		c.local, c.remote, c.service = rec.DstAddr, rec.SrcAddr, rec.DstService
	} else {
		c.name, c.namespace = rec.SrcWorkload, rec.SrcNamespace
		c.local, c.remote, c.auth = rec.SrcAddr, rec.DstAddr, rec.DstHBONEAddr
	}
	return c
}

// connection formats c in istioctl's columns.
func (c liveConn) connection() Connection {
	addr := func(a netip.AddrPort) string {
		if !a.IsValid() {
			return ""
		}
		return a.String()
	}
	out := Connection{Direction: "Outbound", Protocol: "TCP", Start: c.start,
		Workload: workloadName(c.name, c.namespace), Local: addr(c.local), Remote: addr(c.remote), RemoteTarget: addr(c.auth)}
	if c.inbound {
		out.Direction, out.RemoteTarget = "Inbound", c.service
	}
	if c.hbone {
		out.Protocol = "HBONE"
	}
	return out
}

func workloadName(name, namespace string) string {
	if name == "" {
		return ""
	}
	return name + "." + namespace
}
