package capture

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Chain names in the table.
const (
	ChainPrerouting = "prerouting"
	ChainOutput     = "output"
	ChainNATOutput  = "nat-output"
)

// Install writes the capture rules and the policy route into ns, replacing
// any earlier version of them; it is idempotent. It also brings lo up.
func Install(ns *os.File) error {
	if err := installTable(ns); err != nil {
		return err
	}
	return installRoute(ns)
}

// Remove deletes the capture rules and the policy route from ns; what is
// already gone is not an error.
func Remove(ns *os.File) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		return fmt.Errorf("capture: nftables: %w", err)
	}
	// Adding then deleting in one batch deletes the table whether or not
	// it exists.
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})
	c.DelTable(t)
	terr := c.Flush()
	if terr != nil {
		terr = fmt.Errorf("capture: removing table: %w", terr)
	}
	return errors.Join(terr, removeRoute(ns))
}

// Installed reports whether ns holds the capture table.
func Installed(ns *os.File) (bool, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		return false, fmt.Errorf("capture: nftables: %w", err)
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("capture: listing tables: %w", err)
	}
	for _, t := range ts {
		if t.Name == TableName {
			return true, nil
		}
	}
	return false, nil
}

func installTable(ns *os.File) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		return fmt.Errorf("capture: nftables: %w", err)
	}
	// One batch: (create, delete) the old table, then create the new one.
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})
	c.DelTable(t)
	t = c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})

	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	drop := &expr.Verdict{Kind: expr.VerdictDrop}

	pre := c.AddChain(&nftables.Chain{
		Name: ChainPrerouting, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle,
	})
	rules := [][]expr.Any{
		// ztunnel's own packets (to an application, over lo): remember the
		// connection, so that replies are routed back to ztunnel.
		cat(markIs(Mark), setCtMark(TProxyMark), e(accept)),
		cat(ifnameIs(expr.MetaKeyIIFNAME, "lo"), e(accept)),
		// HBONE over QUIC: ztunnel's UDP socket on the pod's address
		// (not TPROXY'd; counted, for operators and tests).
		cat(ipv4UDP(), dportIs(HBONEPort), e(&expr.Counter{}), e(accept)),
		cat(ipv4TCP(), dportIs(HBONEPort), setMark(TProxyMark), tproxy(HBONEPort), e(accept)),
		cat(ipv4TCP(), dportIs(HBONEPort), e(drop)),
		cat(ctEstablished(), e(accept)),
		cat(ipv4TCP(), setMark(TProxyMark), tproxy(InboundPlaintextPort), e(accept)),
		// No listener took it: ztunnel is not serving this pod; fail closed.
		cat(ipv4TCP(), e(drop)),
	}
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: r})
	}

	out := c.AddChain(&nftables.Chain{
		Name: ChainOutput, Table: t, Type: nftables.ChainTypeRoute,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle,
	})
	c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: cat(
		ctMarkIs(TProxyMark),
		e(&expr.Ct{Key: expr.CtKeyMARK, Register: 1}),
		e(&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1}),
	)})

	nat := c.AddChain(&nftables.Chain{
		Name: ChainNATOutput, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest,
	})
	for _, r := range [][]expr.Any{
		cat(markIs(Mark), e(accept)),
		cat(markIs(TProxyMark), e(accept)),
		cat(ifnameIs(expr.MetaKeyOIFNAME, "lo"), e(accept)),
		cat(ipv4TCP(),
			e(&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(OutboundPort)}),
			e(&expr.Redir{RegisterProtoMin: 1})),
	} {
		c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: r})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("capture: writing nftables rules: %w", err)
	}
	return nil
}

func e(x ...expr.Any) []expr.Any { return x }

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// masked compares register 1, masked with MarkMask, to v.
func masked(v uint32) []expr.Any {
	return e(
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(MarkMask), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(v)},
	)
}

func markIs(v uint32) []expr.Any {
	return cat(e(&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}), masked(v))
}

func ctMarkIs(v uint32) []expr.Any {
	return cat(e(&expr.Ct{Key: expr.CtKeyMARK, Register: 1}), masked(v))
}

func setMark(v uint32) []expr.Any {
	return e(
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(v)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	)
}

func setCtMark(v uint32) []expr.Any {
	return e(
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(v)},
		&expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: 1},
	)
}

func ifnameIs(key expr.MetaKey, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return e(
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	)
}

func ipv4TCP() []expr.Any {
	return e(
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	)
}

func ipv4UDP() []expr.Any {
	return e(
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
	)
}

// QUICPackets returns the packets the rule letting UDP 15008 into ns
// counted (HBONE over QUIC), and whether the rule is there.
func QUICPackets(ns *os.File) (uint64, bool, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		return 0, false, fmt.Errorf("capture: nftables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	rules, err := c.GetRules(t, &nftables.Chain{Name: ChainPrerouting, Table: t})
	if err != nil {
		return 0, false, fmt.Errorf("capture: listing rules: %w", err)
	}
	for _, r := range rules {
		var udp, port bool
		for _, x := range r.Exprs {
			switch x := x.(type) {
			case *expr.Cmp:
				udp = udp || (len(x.Data) == 1 && x.Data[0] == unix.IPPROTO_UDP)
				port = port || string(x.Data) == string(binaryutil.BigEndian.PutUint16(HBONEPort))
			case *expr.Counter:
				if udp && port {
					return x.Packets, true, nil
				}
			}
		}
	}
	return 0, false, nil
}

func dportIs(port uint16) []expr.Any {
	return e(
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	)
}

func ctEstablished() []expr.Any {
	return e(
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	)
}

func tproxy(port uint16) []expr.Any {
	return e(
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.TProxy{Family: unix.NFPROTO_IPV4, TableFamily: unix.NFPROTO_INET, RegPort: 1},
	)
}

// policyRoute returns the rule and route of the local table.
func policyRoute(h *netlink.Handle) (*netlink.Rule, *netlink.Route, error) {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return nil, nil, fmt.Errorf("capture: lo: %w", err)
	}
	rule := netlink.NewRule()
	rule.Family = unix.AF_INET
	rule.Mark = TProxyMark
	mask := uint32(MarkMask)
	rule.Mask = &mask
	rule.Table = RouteTable
	route := &netlink.Route{
		LinkIndex: lo.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Table:     RouteTable,
		Type:      unix.RTN_LOCAL,
		Scope:     unix.RT_SCOPE_HOST,
	}
	return rule, route, nil
}

func handleAt(ns *os.File) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(netns.NsHandle(ns.Fd()))
	if err != nil {
		return nil, fmt.Errorf("capture: netlink in %s: %w", ns.Name(), err)
	}
	return h, nil
}

func installRoute(ns *os.File) error {
	h, err := handleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("capture: lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("capture: lo up: %w", err)
	}
	rule, route, err := policyRoute(h)
	if err != nil {
		return err
	}
	if err := h.RouteReplace(route); err != nil {
		return fmt.Errorf("capture: route local 0.0.0.0/0 table %d: %w", RouteTable, err)
	}
	have, err := hasRule(h)
	if err != nil {
		return err
	}
	if !have {
		if err := h.RuleAdd(rule); err != nil {
			return fmt.Errorf("capture: rule fwmark %#x lookup %d: %w", TProxyMark, RouteTable, err)
		}
	}
	return nil
}

// hasRule reports whether the policy rule is present.
func hasRule(h *netlink.Handle) (bool, error) {
	rules, err := h.RuleList(unix.AF_INET)
	if err != nil {
		return false, fmt.Errorf("capture: listing rules: %w", err)
	}
	for _, r := range rules {
		if r.Table == RouteTable && r.Mark == TProxyMark && r.Mask != nil && *r.Mask == MarkMask {
			return true, nil
		}
	}
	return false, nil
}

func removeRoute(ns *os.File) error {
	h, err := handleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	rule, route, err := policyRoute(h)
	if err != nil {
		return err
	}
	var errs []error
	for {
		have, err := hasRule(h)
		if err != nil || !have {
			errs = append(errs, err)
			break
		}
		if err := h.RuleDel(rule); err != nil {
			errs = append(errs, fmt.Errorf("capture: deleting rule: %w", err))
			break
		}
	}
	if err := h.RouteDel(route); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("capture: deleting route: %w", err))
	}
	return errors.Join(errs...)
}

// PolicyRouteInstalled reports whether ns holds the policy rule and the
// local route of table RouteTable.
func PolicyRouteInstalled(ns *os.File) (rule, route bool, err error) {
	h, err := handleAt(ns)
	if err != nil {
		return false, false, err
	}
	defer h.Close()
	rule, err = hasRule(h)
	if err != nil {
		return false, false, err
	}
	routes, err := h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: RouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return false, false, fmt.Errorf("capture: listing routes: %w", err)
	}
	return rule, len(routes) > 0, nil
}
