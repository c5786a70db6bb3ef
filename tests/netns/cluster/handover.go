package cluster

import (
	"fmt"
	"time"
)

// Handover is what a ztunnel handover took.
type Handover struct {
	// Started is when the successor was started, Ready when it answered
	// /healthz/ready, Terminated when the old ztunnel was sent SIGTERM
	// and Exited when it had exited.
	Started, Ready, Terminated, Exited time.Time
}

// HandOverZtunnel replaces the node's ztunnel the way a DaemonSet rolled
// out with maxSurge does: StartSuccessor, then HandOverTo.
func (n *Node) HandOverZtunnel() (*Ztunnel, Handover, error) {
	z, h, err := n.StartSuccessor()
	if err != nil {
		return nil, h, err
	}
	err = n.HandOverTo(z, &h)
	return z, h, err
}

// StartSuccessor starts a second ztunnel on the node next to the running
// one (same ZDS socket and pod records; its admin, metrics and readiness
// ports on the other of 127.0.0.1 and 127.0.0.2) and waits until it is
// ready: it listens in every pod too. It is not yet the node's ztunnel
// (HandOverTo makes it so); on error it is killed.
func (n *Node) StartSuccessor() (*Ztunnel, Handover, error) {
	var h Handover
	old := n.Ztunnel()
	if old == nil {
		return nil, h, fmt.Errorf("node %s has no ztunnel to hand over", n.Name)
	}
	host := "127.0.0.2"
	if old.host == host {
		host = "" // back to 127.0.0.1
	}
	h.Started = time.Now()
	z, err := n.startZtunnelAt(host, false)
	if err != nil {
		if z != nil {
			z.kill()
		}
		return nil, h, fmt.Errorf("successor ztunnel on %s: %w", n.Name, err)
	}
	h.Ready = time.Now()
	return z, h, nil
}

// HandOverTo makes z (from StartSuccessor) the node's ztunnel, stops the
// old one with SIGTERM and waits for it to exit (Process.Stop: 10 s at
// most), recording the times in h.
func (n *Node) HandOverTo(z *Ztunnel, h *Handover) error {
	n.mu.Lock()
	old := n.zt
	n.zt = z
	n.mu.Unlock()
	h.Terminated = time.Now()
	var err error
	if old != nil {
		err = old.Stop()
	}
	h.Exited = time.Now()
	if err != nil {
		return fmt.Errorf("old ztunnel on %s: %w", n.Name, err)
	}
	return nil
}
