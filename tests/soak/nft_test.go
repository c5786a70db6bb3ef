package soak

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/ambient-go/mesh/tests/netns"
)

// blockTable is the nftables table the block lives in.
const blockTable = "soak-block-hbone"

// portBlock drops TCP and UDP to a port crossing a node (its forward hook:
// the node routes its pods' traffic) and arriving at it (input), counting
// the packets dropped.
type portBlock struct {
	ns    netns.NS
	table *nftables.Table
	rules []*nftables.Chain
}

// blockPort adds the table to the node's namespace.
func blockPort(ns netns.NS, port uint16) (*portBlock, error) {
	b := &portBlock{ns: ns}
	err := b.do(func(c *nftables.Conn) error {
		b.table = c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: blockTable})
		policy := nftables.ChainPolicyAccept
		for _, hook := range []struct {
			name string
			num  *nftables.ChainHook
		}{{"forward", nftables.ChainHookForward}, {"input", nftables.ChainHookInput}} {
			ch := c.AddChain(&nftables.Chain{Name: hook.name, Table: b.table, Type: nftables.ChainTypeFilter,
				Hooknum: hook.num, Priority: nftables.ChainPriorityFilter, Policy: &policy})
			b.rules = append(b.rules, ch)
			for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
				c.AddRule(&nftables.Rule{Table: b.table, Chain: ch, Exprs: []expr.Any{
					&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
					&expr.Counter{},
					&expr.Verdict{Kind: expr.VerdictDrop},
				}})
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("blocking port %d in %s: %w", port, ns.Name, err)
	}
	return b, nil
}

func (b *portBlock) do(f func(*nftables.Conn) error) error {
	h, err := b.ns.Open()
	if err != nil {
		return err
	}
	defer h.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		return err
	}
	if err := f(c); err != nil {
		return err
	}
	return c.Flush()
}

// dropped is the number of packets the rules dropped.
func (b *portBlock) dropped() (uint64, error) {
	var n uint64
	err := b.do(func(c *nftables.Conn) error {
		for _, ch := range b.rules {
			rules, err := c.GetRules(b.table, ch)
			if err != nil {
				return err
			}
			for _, r := range rules {
				for _, e := range r.Exprs {
					if ctr, ok := e.(*expr.Counter); ok {
						n += ctr.Packets
					}
				}
			}
		}
		return nil
	})
	return n, err
}

// remove deletes the table; removing twice, or from a namespace already
// gone, is not an error.
func (b *portBlock) remove() error {
	if b == nil || b.table == nil {
		return nil
	}
	t := b.table
	b.table = nil
	err := b.do(func(c *nftables.Conn) error {
		c.DelTable(t)
		return nil
	})
	if err != nil && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR)) {
		return nil
	}
	return err
}
