// Package capture redirects a pod's traffic to ztunnel inside the pod's own
// network namespace, as istio-cni's in-pod mode does, and gives ztunnel the
// sockets it needs there.
//
// Install writes, in one atomic nftables batch, the table "ztunnel" (family
// inet) into the pod's netns:
//
//   - nat OUTPUT: TCP from the pod that is not ztunnel's own (mark 0x539),
//     not replying to a TPROXY'd connection (mark 0x111) and not leaving
//     through lo is redirected to 127.0.0.1:15001;
//   - mangle PREROUTING: packets of ztunnel's own sockets (mark 0x539) set
//     the conntrack mark 0x111 and pass; anything arriving on lo passes; TCP
//     to port 15008 is TPROXY'd to ztunnel's HBONE listener, established
//     flows pass, other TCP is TPROXY'd to the plaintext listener 15006,
//     both with mark 0x111; TCP that no listener takes is dropped (capture
//     fails closed while ztunnel is down);
//   - route OUTPUT: packets of connections with conntrack mark 0x111 get
//     mark 0x111, so the application's replies to a connection ztunnel
//     opened from the client's address come back to ztunnel,
//
// and the policy route "fwmark 0x111/0xfff lookup 100" with "local
// 0.0.0.0/0 dev lo table 100". Remove deletes exactly these. Only IPv4 is
// captured.
//
// Sockets: Listen opens a listener inside the pod's netns and Dial opens a
// connection from inside it; both run on a locked OS thread that enters
// the netns and leaves it again (Dial leaves as soon as socket(2) has
// returned: a socket keeps the namespace it was created in, so bind,
// connect and the wait for it run outside, on any thread). Every socket
// carries SO_MARK 0x539.
// OriginalDst reads SO_ORIGINAL_DST from a redirected connection.
package capture

// Ports and marks of in-pod capture (Istio's values).
const (
	// OutboundPort receives the pod's redirected outbound TCP.
	OutboundPort = 15001
	// InboundPlaintextPort receives inbound TCP that is not HBONE.
	InboundPlaintextPort = 15006
	// HBONEPort receives inbound HBONE.
	HBONEPort = 15008

	// Mark is set (SO_MARK) on every socket of ztunnel; capture skips it.
	Mark = 0x539
	// TProxyMark marks TPROXY'd packets and the replies that must return
	// to ztunnel; the policy route sends it to the local table.
	TProxyMark = 0x111
	// MarkMask is the part of the mark the rules look at.
	MarkMask = 0xfff
	// RouteTable is the routing table of the policy route.
	RouteTable = 100
	// TableName is the nftables table (family inet) capture owns.
	TableName = "ztunnel"
)
