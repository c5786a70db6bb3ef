// Package zds is the protocol between the CNI plugin and ztunnel (in-pod
// mode): the plugin hands each new pod's network namespace to its node's
// ztunnel and waits for ztunnel to acknowledge that the pod's capture is in
// place, so that the pod never sends an uncaptured packet.
//
// The transport is a unix SOCK_SEQPACKET socket with one request per
// connection: the client sends one JSON message — {"type":"add","pod":…}
// with the pod's netns file descriptor attached (SCM_RIGHTS), or
// {"type":"del","pod":…} without — and the server answers one JSON
// {"type":"ack","error":""}; then both close. A non-empty error fails the
// request.
//
// Because ztunnel may restart while pods keep running, the plugin also
// writes a record of every pod it added to a state directory (WriteRecord,
// RemoveRecord); a starting ztunnel reads them (Records) and re-opens each
// pod's netns by path.
package zds

import (
	"net/netip"
)

const (
	// DefaultSocket is where ztunnel listens for the CNI plugin.
	DefaultSocket = "/var/run/ztunnel/zds.sock"
	// DefaultStateDir holds one record per pod added; it survives ztunnel
	// restarts.
	DefaultStateDir = "/var/run/ztunnel/pods"
)

// Pod is a pod as the container runtime knows it.
type Pod struct {
	UID       string       `json:"uid"`
	Name      string       `json:"name"`
	Namespace string       `json:"namespace"`
	IPs       []netip.Addr `json:"ips,omitempty"`
	// Netns is the path of the pod's network namespace, e.g.
	// /var/run/netns/x or /proc/<pid>/ns/net.
	Netns string `json:"netns"`
}

// Key names the pod: its UID, or namespace/name when it has none.
func (p Pod) Key() string {
	if p.UID != "" {
		return p.UID
	}
	return p.Namespace + "/" + p.Name
}

// Message types.
const (
	TypeAdd = "add"
	TypeDel = "del"
	TypeAck = "ack"
)

// message is the one JSON document each side sends.
type message struct {
	Type  string `json:"type"`
	Pod   *Pod   `json:"pod,omitempty"`
	Error string `json:"error,omitempty"`
}

// maxMessage bounds a message; a Pod record is far smaller.
const maxMessage = 64 << 10
