package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
)

type ztunnelConfigOptions struct {
	*Options
	node     string
	output   string
	level    string
	reset    bool
	waypoint string
	raw      bool
}

func newZtunnelConfigCmd(o *Options) *cobra.Command {
	zo := &ztunnelConfigOptions{Options: o}
	cmd := &cobra.Command{
		Use:     "ztunnel-config",
		Aliases: []string{"zc"},
		Short:   "Show a ztunnel's configuration: workloads, services, policies, certificates, connections",
		Long: `ztunnel-config shows what one ztunnel holds, read from its admin server's
/config_dump, in istioctl's columns. --node picks the ztunnel of a node (in a
cluster meshctl port-forwards to that ztunnel pod's admin port 15000; in local
mode give its address with --proxy-admin NODE=ADDR).`,
		Example: `  meshctl ztunnel-config workload --node node-a
  meshctl ztunnel-config service -n demo -o json
  meshctl ztunnel-config all --istiod 127.10.0.1:15010 --proxy-admin node-a=127.10.1.1:15000
  meshctl ztunnel-config log --level debug`,
	}
	cmd.PersistentFlags().StringVar(&zo.node, "node", "", "the node whose ztunnel to read (default: any)")
	cmd.PersistentFlags().BoolVar(&zo.raw, "raw", false, "connections: show addresses, not the names of the services and workloads they belong to")
	sections := []struct {
		use, short string
		print      func(io.Writer, *ztunnelConfigOptions, *configDump) error
		data       func(*configDump) any
	}{
		{"workload", "Workloads the ztunnel knows (NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL)", printWorkloads, func(d *configDump) any { return d.Workloads }},
		{"service", "Services the ztunnel knows (NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS)", printServices, func(d *configDump) any { return d.Services }},
		{"policy", "Authorization policies the ztunnel enforces (NAMESPACE POLICY NAME ACTION SCOPE)", printPolicies, func(d *configDump) any { return d.Policies }},
		{"certificate", "Workload certificates the ztunnel holds", printCertificates, func(d *configDump) any { return d.Certificates }},
		{"connections", "Connections the ztunnel carries (WORKLOAD DIRECTION LOCAL REMOTE REMOTE TARGET PROTOCOL)", printConnections, func(d *configDump) any { return d.Connections }},
		{"all", "All of the above", printAll, func(d *configDump) any { return d }},
	}
	for _, s := range sections {
		sub := &cobra.Command{
			Use:     s.use,
			Short:   s.short,
			Args:    cobra.NoArgs,
			Example: fmt.Sprintf("  meshctl ztunnel-config %s --node node-a\n  meshctl ztunnel-config %s -o yaml", s.use, s.use),
			RunE: func(cmd *cobra.Command, _ []string) error {
				if err := checkOutput(zo.output); err != nil {
					return err
				}
				d, err := zo.fetch(cmd.Context())
				if err != nil {
					return err
				}
				if zo.output != outTable {
					return printData(zo.Out, zo.output, s.data(d))
				}
				return s.print(zo.Out, zo, d)
			},
		}
		addOutputFlag(sub, &zo.output)
		cmd.AddCommand(sub)
	}
	logCmd := &cobra.Command{
		Use:   "log",
		Short: "Show or set a ztunnel's (or a waypoint's) log levels, one per component",
		Long: `log shows the log levels of a ztunnel, or sets them with --level, through its
admin server's /logging, as istioctl ztunnel-config log does. A proxy has a
default level and one level per component (the "component" of its log
records: proxy, xds-client, identity, hbone-pool, ...; "access" is the access
log); GET /logging lists the components. --level takes LEVEL (the default,
which components without a level of their own follow), COMPONENT:LEVEL, or a
comma-separated list of both; all:LEVEL sets every component. Levels: debug,
info, warn, error, off. --reset puts every level back to the proxy's
--log-level. --waypoint NAME (with -n) talks to a waypoint's admin server
instead of a ztunnel's.`,
		Example: `  meshctl ztunnel-config log --node node-a
  meshctl ztunnel-config log --level access:debug,xds-client:info
  meshctl ztunnel-config log --level debug
  meshctl ztunnel-config log --reset
  meshctl ztunnel-config log -n demo --waypoint waypoint --level proxy:debug`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return zo.runLog(cmd.Context()) },
	}
	logCmd.Flags().StringVar(&zo.level, "level", "", "levels to set: LEVEL, COMPONENT:LEVEL or a comma-separated list (levels debug, info, warn, error, off)")
	logCmd.Flags().BoolVarP(&zo.reset, "reset", "r", false, "reset every level to the proxy's --log-level (before --level, if given)")
	logCmd.Flags().StringVar(&zo.waypoint, "waypoint", "", "a waypoint (name, in -n's namespace) instead of a ztunnel")
	cmd.AddCommand(logCmd)
	return cmd
}

func (zo *ztunnelConfigOptions) fetch(ctx context.Context) (*configDump, error) {
	a, err := zo.ztunnelAdmin(ctx, zo.node)
	if err != nil {
		return nil, err
	}
	defer a.close()
	return a.configDump(ctx)
}

func (zo *ztunnelConfigOptions) runLog(ctx context.Context) error {
	var a *proxyAdmin
	if zo.waypoint != "" {
		ns := zo.namespace()
		wa, ok, err := zo.waypointAdmin(ctx, ns, zo.waypoint)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("local mode: no --proxy-admin %s/%s=ADDR for waypoint %s/%s", ns, zo.waypoint, ns, zo.waypoint)
		}
		a = wa
	} else {
		za, err := zo.ztunnelAdmin(ctx, zo.node)
		if err != nil {
			return err
		}
		a = za
	}
	defer a.close()
	q := url.Values{}
	if zo.reset {
		q.Set("reset", "")
	}
	if zo.level != "" {
		q.Set("level", zo.level)
	}
	path, method := "/logging", http.MethodGet
	if len(q) > 0 {
		path, method = "/logging?"+q.Encode(), http.MethodPost
	}
	b, err := a.do(ctx, method, path)
	if err != nil {
		return err
	}
	fmt.Fprintf(zo.Out, "%s: %s", a.name, b)
	return nil
}

// selected says whether namespace ns is shown: every namespace unless -n
// was given explicitly (without -A).
func (zo *ztunnelConfigOptions) selected(ns string) bool {
	if zo.AllNamespaces || zo.Kube.Namespace == nil || *zo.Kube.Namespace == "" {
		return true
	}
	return ns == *zo.Kube.Namespace
}

func printAll(w io.Writer, zo *ztunnelConfigOptions, d *configDump) error {
	for i, f := range []func(io.Writer, *ztunnelConfigOptions, *configDump) error{printWorkloads, printServices, printPolicies, printCertificates, printConnections} {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if err := f(w, zo, d); err != nil {
			return err
		}
	}
	return nil
}

func printWorkloads(w io.Writer, zo *ztunnelConfigOptions, d *configDump) error {
	c, err := d.decode()
	if err != nil {
		return err
	}
	ws := slices.Clone(c.Workloads)
	slices.SortFunc(ws, func(a, b *workloadapi.Workload) int {
		return strings.Compare(a.GetNamespace()+"/"+a.GetName(), b.GetNamespace()+"/"+b.GetName())
	})
	t := newTable(w, "NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL")
	for _, wl := range ws {
		if !zo.selected(wl.GetNamespace()) {
			continue
		}
		t.row(wl.GetNamespace(), wl.GetName(), orNone(addrList(wl.GetAddresses())), wl.GetNode(), orNone(waypointName(wl.GetWaypoint())), protocolName(wl.GetTunnelProtocol()))
	}
	return t.flush()
}

func printServices(w io.Writer, zo *ztunnelConfigOptions, d *configDump) error {
	c, err := d.decode()
	if err != nil {
		return err
	}
	svcs := slices.Clone(c.Services)
	slices.SortFunc(svcs, func(a, b *workloadapi.Service) int {
		return strings.Compare(a.GetNamespace()+"/"+a.GetName(), b.GetNamespace()+"/"+b.GetName())
	})
	t := newTable(w, "NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS")
	for _, s := range svcs {
		if !zo.selected(s.GetNamespace()) {
			continue
		}
		var vips []string
		for _, a := range s.GetAddresses() {
			if ip, ok := netip.AddrFromSlice(a.GetAddress()); ok {
				vips = append(vips, ip.String())
			}
		}
		healthy, total := endpoints(c.Workloads, s.GetNamespace()+"/"+s.GetHostname())
		t.row(s.GetNamespace(), s.GetName(), strings.Join(vips, ","), orNone(waypointName(s.GetWaypoint())), fmt.Sprintf("%d/%d", healthy, total))
	}
	return t.flush()
}

// endpoints counts the workloads serving the service key, and the healthy
// ones among them.
func endpoints(ws []*workloadapi.Workload, key string) (healthy, total int) {
	for _, w := range ws {
		if _, ok := w.GetServices()[key]; ok {
			total++
			if w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY {
				healthy++
			}
		}
	}
	return healthy, total
}

func printPolicies(w io.Writer, zo *ztunnelConfigOptions, d *configDump) error {
	c, err := d.decode()
	if err != nil {
		return err
	}
	ps := slices.Clone(c.Policies)
	slices.SortFunc(ps, func(a, b *security.Authorization) int {
		return strings.Compare(a.GetNamespace()+"/"+a.GetName(), b.GetNamespace()+"/"+b.GetName())
	})
	t := newTable(w, "NAMESPACE", "POLICY NAME", "ACTION", "SCOPE")
	for _, p := range ps {
		if !zo.selected(p.GetNamespace()) {
			continue
		}
		action := titleCase(p.GetAction().String())
		if p.GetDryRun() {
			action += " (dry run)"
		}
		t.row(p.GetNamespace(), p.GetName(), action, scopeName(p.GetScope()))
	}
	return t.flush()
}

func printCertificates(w io.Writer, zo *ztunnelConfigOptions, d *configDump) error {
	certs := slices.Clone(d.Certificates)
	slices.SortFunc(certs, func(a, b certificate) int { return strings.Compare(a.Identity, b.Identity) })
	now := clock()
	t := newTable(w, "CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE")
	for _, c := range certs {
		valid := !now.Before(c.NotBefore) && now.Before(c.NotAfter)
		t.row(c.Identity, "Leaf", "Available", fmt.Sprint(valid), c.Serial, c.NotAfter.UTC().Format(time.RFC3339), c.NotBefore.UTC().Format(time.RFC3339))
	}
	return t.flush()
}

// printConnections prints the connections the ztunnel carries in
// istioctl's columns; as istioctl does, addresses of known services and
// workloads are shown by name (hostname:port, name.namespace:port) unless
// --raw.
func printConnections(w io.Writer, zo *ztunnelConfigOptions, d *configDump) error {
	if d.Connections == nil {
		fmt.Fprintf(w, "ztunnel %s does not report its connections in /config_dump\n", d.Node)
		return nil
	}
	lookup := func(addr string) string { return addr }
	if !zo.raw {
		c, err := d.decode()
		if err != nil {
			return err
		}
		names := map[netip.Addr]string{}
		for _, wl := range c.Workloads {
			for _, b := range wl.GetAddresses() {
				if ip, ok := netip.AddrFromSlice(b); ok {
					names[ip] = wl.GetName() + "." + wl.GetNamespace()
				}
			}
		}
		for _, svc := range c.Services { // a VIP names its service
			for _, a := range svc.GetAddresses() {
				if ip, ok := netip.AddrFromSlice(a.GetAddress()); ok {
					names[ip] = svc.GetHostname()
				}
			}
		}
		lookup = func(addr string) string {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return addr
			}
			if n, ok := names[ap.Addr()]; ok {
				return net.JoinHostPort(n, strconv.Itoa(int(ap.Port())))
			}
			return addr
		}
	}
	t := newTable(w, "WORKLOAD", "DIRECTION", "LOCAL", "REMOTE", "REMOTE TARGET", "PROTOCOL")
	for _, c := range d.Connections {
		if _, ns, _ := strings.Cut(c.Workload, "."); !zo.selected(ns) {
			continue
		}
		t.row(c.Workload, c.Direction, lookup(c.Local), lookup(c.Remote), lookup(c.RemoteTarget), c.Protocol)
	}
	return t.flush()
}

func addrList(bs [][]byte) string {
	var out []string
	for _, b := range bs {
		if ip, ok := netip.AddrFromSlice(b); ok {
			out = append(out, ip.String())
		}
	}
	return strings.Join(out, ",")
}

// waypointName names a waypoint reference as istioctl does: the Service's
// name for the hostname form, the address otherwise.
func waypointName(g *workloadapi.GatewayAddress) string {
	if g == nil {
		return ""
	}
	if h := g.GetHostname(); h != nil {
		name, _, _ := strings.Cut(h.GetHostname(), ".")
		return name
	}
	if ip, ok := netip.AddrFromSlice(g.GetAddress().GetAddress()); ok {
		return ip.String()
	}
	return ""
}

func scopeName(s security.Scope) string {
	switch s {
	case security.Scope_GLOBAL:
		return "Global"
	case security.Scope_NAMESPACE:
		return "Namespace"
	case security.Scope_WORKLOAD_SELECTOR:
		return "WorkloadSelector"
	}
	return s.String()
}

func titleCase(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + strings.ToLower(s[1:])
}

// protocolName is istioctl's PROTOCOL: HBONE, or TCP for a workload
// outside the mesh.
func protocolName(p workloadapi.TunnelProtocol) string {
	if p == workloadapi.TunnelProtocol_HBONE {
		return "HBONE"
	}
	return "TCP"
}
