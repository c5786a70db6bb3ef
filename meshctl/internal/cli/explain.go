package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// Labels that choose a waypoint (Istio's).
const (
	labelUseWaypoint   = "istio.io/use-waypoint"
	labelUseWaypointNS = "istio.io/use-waypoint-namespace"
)

type explainOptions struct {
	*Options
	node      string
	configDir string
	output    string
	req       requestFlags
}

func newExplainCmd(o *Options) *cobra.Command {
	eo := &explainOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "explain SRC DST:PORT",
		Short: "Explain the path a connection takes: ztunnels, waypoint and why, and the policies that decide",
		Long: `explain follows a connection from SRC to DST:PORT through the mesh as the
live configuration says: the ztunnel that captures it, the waypoint it goes
through and the label on the object that chose it, the ztunnel that delivers
it, and at each hop the authorization policies that apply and the one that
decides. The configuration is a ztunnel's own (its /config_dump), evaluated
with the data path's code (pkg/state, pkg/authz).

SRC is a pod (NAMESPACE/NAME, NAME.NAMESPACE, or NAME with -n) or a pod IP.
DST is a service (hostname, NAME.NAMESPACE or VIP) or a pod (as SRC), with
the port the client dials.

At a waypoint, explain lists the L7 policies the waypoint holds (from its
admin server: a port-forward to its pod, or --proxy-admin NAMESPACE/NAME=ADDR
in local mode), which of them bind to the destination and what each matches.
Their decision depends on the request: describe one with --method, --path,
--header NAME=VALUE and --host (or --tcp for a stream that is not HTTP) and
explain decides it with the waypoint's own evaluator (pkg/authz), as the
waypoint would: ALLOW, or DENY 403 naming the policy.

Labels are read from the API server, or in local mode from the config
directory istiod-lite serves (--config-dir).`,
		Example: `  meshctl explain demo/client echo.demo:80
  meshctl explain client.demo echo-l7.demo.svc.cluster.local:80 -o json
  meshctl explain demo/client echo-l7.demo:80 --method POST --path /admin --header x-user=alice
  meshctl explain 127.10.1.10 127.10.100.11:80 --proxy-admin node-a=127.10.1.1:15000 --config-dir _out/demo/config`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error { return eo.run(cmd.Context(), args[0], args[1]) },
	}
	cmd.Flags().StringVar(&eo.node, "node", "", "read the configuration from the ztunnel of this node (default: any)")
	cmd.Flags().StringVar(&eo.configDir, "config-dir", "", "local mode: istiod-lite's config directory, to name the labels that chose a waypoint")
	eo.req.add(cmd.Flags())
	addOutputFlag(cmd, &eo.output)
	return cmd
}

// Explanation is the path of one connection.
type Explanation struct {
	Source      Endpoint `json:"source"`
	Destination string   `json:"destination"`
	// Service is the destination service, when DST names one.
	Service *ServiceHop `json:"service,omitempty"`
	// Paths holds one path per endpoint the connection may reach.
	Paths []Path `json:"paths"`
	// Notes are facts that hold for every path (the source is not in the
	// mesh, the service has no endpoint, ...).
	Notes []string `json:"notes,omitempty"`
}

// Endpoint is a workload at one end.
type Endpoint struct {
	Workload string `json:"workload"` // namespace/name
	Address  string `json:"address"`
	Node     string `json:"node,omitempty"`
	Identity string `json:"identity,omitempty"`
	InMesh   bool   `json:"inMesh"`
}

// ServiceHop describes the destination service.
type ServiceHop struct {
	Name       string `json:"name"` // namespace/hostname
	Port       uint16 `json:"port"`
	TargetPort uint16 `json:"targetPort,omitempty"` // 0: per endpoint
}

// Path is the way to one endpoint.
type Path struct {
	Endpoint Endpoint `json:"endpoint"`
	Port     uint16   `json:"port"`
	Hops     []Hop    `json:"hops"`
	Verdict  string   `json:"verdict"` // ALLOW or DENY
}

// Hop is one proxy on the path.
type Hop struct {
	Proxy     string   `json:"proxy"` // "ztunnel node-a", "waypoint demo/waypoint"
	Role      string   `json:"role"`  // outbound, waypoint, inbound
	Does      []string `json:"does"`
	Why       string   `json:"why,omitempty"`
	Policies  []string `json:"policies,omitempty"` // that apply here
	Decision  string   `json:"decision,omitempty"`
	DecidedBy string   `json:"decidedBy,omitempty"`
	// L7Policies are the L7 policies a waypoint holds (the waypoint hop,
	// when its admin server was read); Request the request decided there.
	L7Policies []L7Policy `json:"l7Policies,omitempty"`
	Request    *L7Request `json:"request,omitempty"`
}

func (eo *explainOptions) run(ctx context.Context, src, dst string) error {
	if err := checkOutput(eo.output); err != nil {
		return err
	}
	a, err := eo.ztunnelAdmin(ctx, eo.node)
	if err != nil {
		return err
	}
	defer a.close()
	d, err := a.configDump(ctx)
	if err != nil {
		return err
	}
	cfg, err := d.decode()
	if err != nil {
		return err
	}
	var labels labelSource = noLabels{}
	switch {
	case eo.configDir != "":
		if labels, err = loadDirLabels(eo.configDir); err != nil {
			return err
		}
	case !eo.Local():
		kc, err := eo.kube()
		if err != nil {
			return err
		}
		labels = &kubeLabels{kc: kc}
	}
	e, err := explain(ctx, cfg, labels, eo.waypointL7, &eo.req, eo.namespace(), src, dst)
	if err != nil {
		return err
	}
	if eo.output != outTable {
		return printData(eo.Out, eo.output, e)
	}
	return renderExplanation(eo.Out, e)
}

// waypointL7 is a waypoint's L7 configuration.
type waypointL7 struct {
	// Gateway is the waypoint's "namespace/name"; empty when it does not
	// say (older waypoints).
	Gateway string
	// Names are the policies it holds; Policies the policies themselves,
	// nil when it does not show them (older waypoints).
	Names    []string
	Policies []*waypoint.Authorization
}

// l7Source returns the L7 configuration of waypoint namespace/name; nil,
// nil when it cannot be looked up here.
type l7Source func(ctx context.Context, namespace, name string) (*waypointL7, error)

func (eo *explainOptions) waypointL7(ctx context.Context, namespace, name string) (*waypointL7, error) {
	a, ok, err := eo.waypointAdmin(ctx, namespace, name)
	if err != nil || !ok {
		return nil, err
	}
	defer a.close()
	d, err := a.waypointDump(ctx)
	if err != nil {
		return nil, err
	}
	pols, err := d.authorizations()
	if err != nil {
		return nil, fmt.Errorf("admin of %s: %w", a.name, err)
	}
	return &waypointL7{Gateway: d.Gateway, Names: d.Policies, Policies: pols}, nil
}

// explain computes the paths of a connection from src to dst with the
// data path's own lookups.
func explain(ctx context.Context, cfg *meshConfig, labels labelSource, l7 l7Source, rf *requestFlags, defaultNS, src, dst string) (*Explanation, error) {
	store, err := cfg.store()
	if err != nil {
		return nil, err
	}
	sw, err := findWorkload(store, cfg, defaultNS, src)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", src, err)
	}
	host, portStr, err := net.SplitHostPort(dst)
	if err != nil {
		return nil, fmt.Errorf("destination %q: want HOST:PORT", dst)
	}
	p, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || p == 0 {
		return nil, fmt.Errorf("destination %q: bad port", dst)
	}
	port := uint16(p)
	req, err := rf.request(host, port)
	if err != nil {
		return nil, err
	}
	e := &Explanation{Source: endpointOf(sw), Destination: dst}
	srcIP := firstAddr(sw)
	if !e.Source.InMesh {
		e.Notes = append(e.Notes, fmt.Sprintf("%s is not in the mesh (no HBONE): no ztunnel captures its traffic, which leaves in plaintext; a destination in STRICT mode refuses it", e.Source.Workload))
	}
	policies := authz.Compile(cfg.Policies)

	svc := findService(store, cfg, defaultNS, host)
	if svc != nil {
		target, ok := svc.TargetPort(port)
		if !ok {
			return nil, fmt.Errorf("service %s has no port %d", svc.Key, port)
		}
		e.Service = &ServiceHop{Name: svc.Key, Port: port, TargetPort: target}
		healthy, _ := endpoints(cfg.Workloads, svc.Key)
		seen := map[string]bool{}
		for range healthy {
			w, tp, err := store.PickEndpoint(svc, port)
			if err != nil {
				break
			}
			if seen[w.Uid] {
				continue
			}
			seen[w.Uid] = true
			dstIP := svc.VIPs[0]
			if vip, err := netip.ParseAddr(host); err == nil {
				dstIP = vip
			}
			path, err := pathTo(ctx, store, policies, labels, l7, req, sw, srcIP, w, tp, svc, netip.AddrPortFrom(dstIP, port))
			if err != nil {
				return nil, err
			}
			e.Paths = append(e.Paths, path)
		}
		slices.SortFunc(e.Paths, func(a, b Path) int { return strings.Compare(a.Endpoint.Workload, b.Endpoint.Workload) })
		if len(e.Paths) == 0 {
			e.Notes = append(e.Notes, fmt.Sprintf("service %s has no healthy endpoint serving port %d: the connection fails", svc.Key, port))
		}
		noteNoWaypoint(e, req)
		return e, nil
	}
	dw, err := findWorkload(store, cfg, defaultNS, host)
	if err != nil {
		return nil, fmt.Errorf("destination %s: no such service or workload", host)
	}
	path, err := pathTo(ctx, store, policies, labels, l7, req, sw, srcIP, dw, port, nil, netip.AddrPortFrom(firstAddr(dw), port))
	if err != nil {
		return nil, err
	}
	e.Paths = append(e.Paths, path)
	noteNoWaypoint(e, req)
	return e, nil
}

// noteNoWaypoint notes that a request given is not decided when no path
// goes through a waypoint.
func noteNoWaypoint(e *Explanation, req *L7Request) {
	if req == nil {
		return
	}
	for _, p := range e.Paths {
		for _, h := range p.Hops {
			if h.Role == "waypoint" {
				return
			}
		}
	}
	e.Notes = append(e.Notes, "no waypoint on the way: nothing decides the request at L7 (--method, --path, --header, --host and --tcp do not matter), the ztunnels decide the connection at L4")
}

// renderL7 prints the L7 policies of a waypoint hop and its decision.
func renderL7(w io.Writer, h Hop) {
	var others []string
	for _, p := range h.L7Policies {
		if !p.Applies {
			others = append(others, p.Name)
		}
	}
	if len(h.Policies) == 0 {
		fmt.Fprintf(w, "     L7 policies: none apply\n")
	} else {
		fmt.Fprintf(w, "     L7 policies: %s\n", strings.Join(h.Policies, "; "))
		for _, p := range h.L7Policies {
			if p.Applies {
				fmt.Fprintf(w, "       %s matches %s\n", p.Name, p.Matches)
			}
		}
	}
	if len(others) > 0 {
		fmt.Fprintf(w, "     L7 policies it holds that do not apply here: %s\n", strings.Join(others, "; "))
	}
	switch r := h.Request; {
	case r != nil && r.TCP:
		fmt.Fprintf(w, "     request: a stream that is not HTTP\n")
	case r != nil:
		fmt.Fprintf(w, "     request: %s %s, host %s", r.Method, r.Path, r.Host)
		keys := slices.Sorted(maps.Keys(r.Headers))
		for _, k := range keys {
			for _, v := range r.Headers[k] {
				fmt.Fprintf(w, ", %s: %s", k, v)
			}
		}
		fmt.Fprintln(w)
	}
	switch {
	case h.Decision != "":
		fmt.Fprintf(w, "     decision: %s", h.Decision)
		if h.DecidedBy != "" {
			fmt.Fprintf(w, ", decided by %s", h.DecidedBy)
		}
		fmt.Fprintln(w)
	case len(h.Policies) == 0:
		fmt.Fprintf(w, "     decision: ALLOW for every request (no L7 policy applies)\n")
	default:
		fmt.Fprintf(w, "     decision: depends on the request (what the policies above match): give --method, --path, --header, --host, or --tcp, to decide one\n")
	}
}

// pathTo explains the way from sw to endpoint w at port (the target
// port); svc is the service dialed (nil for a pod address) and dialed the
// address the client dialed; req, if not nil, the request to decide at a
// waypoint.
func pathTo(ctx context.Context, store *state.Store, policies *authz.Policies, labels labelSource, l7 l7Source, req *L7Request, sw *state.Workload, srcIP netip.Addr, w *state.Workload, port uint16, svc *state.Service, dialed netip.AddrPort) (Path, error) {
	p := Path{Endpoint: endpointOf(w), Port: port}
	out := Hop{Role: "outbound", Proxy: "ztunnel " + sw.Node}
	if !endpointOf(sw).InMesh {
		out = Hop{Role: "outbound", Proxy: "none", Does: []string{"the source is not captured: plaintext to " + netip.AddrPortFrom(firstAddr(w), port).String()}}
	} else {
		out.Does = append(out.Does, fmt.Sprintf("captures %s's connection to %s", workloadName(sw), dialed))
		if svc != nil {
			out.Does = append(out.Does, fmt.Sprintf("resolves service %s and picks endpoint %s (%s:%d)", svc.Key, workloadName(w), firstAddr(w), port))
		}
	}

	// Which waypoint, if any: the service's for service traffic, the
	// workload's own for traffic to a pod address; never for traffic a
	// waypoint itself sends.
	var (
		wp     *state.Waypoint
		why    string
		wpErr  error
		isFrom bool
	)
	switch {
	case svc != nil && svc.WaypointRef != nil:
		wp, wpErr = store.ServiceWaypoint(svc, dialed.Addr())
		why = whyWaypoint(ctx, labels, "Service", svc.Namespace, svc.Name, svc.WaypointRef)
	case svc == nil && w.WaypointRef != nil:
		wp, wpErr = store.WorkloadWaypoint(w, dialed.Addr())
		why = whyWaypoint(ctx, labels, "Pod", w.Namespace, w.Name, w.WaypointRef)
	}
	if wp != nil && wp.Workload.Uid == sw.Uid {
		wp, isFrom = nil, true // the source is that waypoint
	}
	if wpErr != nil {
		out.Does = append(out.Does, fmt.Sprintf("its waypoint does not resolve (%v): the connection fails, as in Istio", wpErr))
		p.Hops = append(p.Hops, out)
		p.Verdict = "DENY"
		return p, nil
	}
	peer := sw.ID.String()
	if !endpointOf(sw).InMesh {
		peer = ""
	}
	l7Verdict := "" // the waypoint's decision of req
	if wp != nil {
		out.Does = append(out.Does, fmt.Sprintf("opens HBONE to waypoint %s at %s, authority %s, as %s", workloadName(wp.Workload), wp.Addr, dialed, sw.ID))
		out.Why = why
		p.Hops = append(p.Hops, out)
		name := workloadName(wp.Workload)
		if wp.Service != nil {
			name = wp.Service.Namespace + "/" + wp.Service.Name + " (pod " + workloadName(wp.Workload) + ")"
		}
		wh := Hop{Role: "waypoint", Proxy: "waypoint " + name + " on node " + wp.Workload.Node,
			Does: []string{
				"terminates HBONE and applies the L7 policies bound to it or to the service (targetRefs), per request",
				fmt.Sprintf("opens HBONE to %s at %s:15008, authority %s:%d, as %s", workloadName(w), firstAddr(w), firstAddr(w), port, wp.Workload.ID),
			}}
		undecided := "its L7 decision of the request is not shown"
		if wp.Service != nil {
			wc, err := l7(ctx, wp.Service.Namespace, wp.Service.Name)
			switch {
			case err != nil:
				wh.Does = append(wh.Does, fmt.Sprintf("its L7 policies could not be read: %v", err))
			case wc == nil:
				wh.Does = append(wh.Does, "its L7 policies are in its own /config_dump (give --proxy-admin "+wp.Service.Namespace+"/"+wp.Service.Name+"=ADDR in local mode)")
			case wc.Policies == nil:
				// A waypoint that shows only the names of its policies.
				wh.Policies = wc.Names
				if wh.Policies == nil {
					wh.Policies = []string{}
				}
				undecided = "it shows the names of its L7 policies, not their rules: its decision of the request is not shown"
			default:
				attrs := authz.Request{
					Peer: srcIP, Remote: srcIP, Identity: peer,
					DestIP: dialed.Addr(), Port: dialed.Port(),
					Gateway: cmp.Or(wc.Gateway, wp.Service.Namespace+"/"+wp.Service.Name),
				}
				if svc != nil {
					attrs.Service = svc.Key
				}
				l7Verdict = l7Hop(&wh, wc.Policies, req, attrs)
				undecided = ""
			}
		} else {
			undecided = "it is named as a workload, not a Service: its L7 policies are not read"
		}
		if req != nil && undecided != "" {
			wh.Does = append(wh.Does, undecided)
		}
		p.Hops = append(p.Hops, wh)
		peer = wp.Workload.ID.String()
		srcIP = firstAddr(wp.Workload)
	} else {
		if endpointOf(sw).InMesh {
			out.Does = append(out.Does, fmt.Sprintf("opens HBONE to %s:15008, authority %s:%d, as %s", firstAddr(w), firstAddr(w), port, sw.ID))
		}
		if isFrom {
			out.Why = "the source is a waypoint: its traffic never goes through a waypoint again"
		} else {
			out.Why = "no waypoint: " + noWaypointWhy(svc)
		}
		p.Hops = append(p.Hops, out)
	}

	in := Hop{Role: "inbound", Proxy: "ztunnel " + w.Node}
	if !endpointOf(w).InMesh {
		in = Hop{Role: "inbound", Proxy: "none", Does: []string{workloadName(w) + " is not in the mesh: no ztunnel delivers or checks the connection"}}
		p.Hops = append(p.Hops, in)
		p.Verdict = "ALLOW"
		if l7Verdict == "DENY" {
			p.Verdict = "DENY"
		}
		return p, nil
	}
	if peer == "" {
		in.Does = append(in.Does, fmt.Sprintf("accepts plaintext from %s (no identity) and checks L4 policy for %s:%d", srcIP, firstAddr(w), port))
	} else {
		in.Does = append(in.Does, fmt.Sprintf("terminates HBONE from %s and checks L4 policy for %s:%d", peer, firstAddr(w), port))
	}
	if l7Verdict == "DENY" {
		if req.TCP {
			in.Does = append(in.Does, "this stream does not get here (the waypoint closes it); for the streams the waypoint allows:")
		} else {
			in.Does = append(in.Does, "this request does not get here (the waypoint answers it); for the requests the waypoint allows:")
		}
	}
	target := authz.Target{Namespace: w.Namespace, Policies: w.AuthorizationPolicies}
	in.Policies = applicable(store.Policies(), target)
	dec := policies.Evaluate(target, &authz.Conn{Src: srcIP, Dst: netip.AddrPortFrom(firstAddr(w), port), Identity: peer})
	p.Verdict = "DENY"
	if dec.Allow && l7Verdict != "DENY" {
		p.Verdict = "ALLOW"
	}
	if dec.Allow {
		in.Does = append(in.Does, fmt.Sprintf("dials %s:%d from %s", firstAddr(w), port, srcIP))
	}
	in.Decision = verdictWord(dec.Allow) + " (" + dec.Reason.String() + ")"
	in.DecidedBy = dec.Policy
	if dec.DryRun {
		shadow := dec.Shadow.Reason.String()
		if dec.Shadow.Policy != "" {
			shadow += ": " + dec.Shadow.Policy
		}
		in.Does = append(in.Does, fmt.Sprintf("with its dry-run policies enforced it would %s (%s)", verdictWord(dec.Shadow.Allow), shadow))
	}
	p.Hops = append(p.Hops, in)
	return p, nil
}

func verdictWord(allow bool) string {
	if allow {
		return "ALLOW"
	}
	return "DENY"
}

func noWaypointWhy(svc *state.Service) string {
	if svc != nil {
		return "service " + svc.Key + " has none"
	}
	return "traffic to a pod address uses only the pod's own waypoint, and it has none"
}

// applicable lists the policies that apply to target, as pkg/authz
// selects them: GLOBAL ones, NAMESPACE ones of its namespace, and the
// WORKLOAD_SELECTOR ones it names.
func applicable(all map[string]*security.Authorization, t authz.Target) []string {
	var out []string
	for key, p := range all {
		ok := false
		switch p.GetScope() {
		case security.Scope_GLOBAL:
			ok = true
		case security.Scope_NAMESPACE:
			ok = p.GetNamespace() == t.Namespace
		case security.Scope_WORKLOAD_SELECTOR:
			ok = slices.Contains(t.Policies, key)
		}
		if ok {
			desc := fmt.Sprintf("%s (%s, %s)", key, p.GetAction(), scopeName(p.GetScope()))
			if p.GetDryRun() {
				desc += " dry-run"
			}
			out = append(out, desc)
		}
	}
	slices.Sort(out)
	return out
}

func endpointOf(w *state.Workload) Endpoint {
	return Endpoint{
		Workload: workloadName(w),
		Address:  firstAddr(w).String(),
		Node:     w.Node,
		Identity: w.ID.String(),
		InMesh:   w.TunnelProtocol == workloadapi.TunnelProtocol_HBONE,
	}
}

func workloadName(w *state.Workload) string { return w.Namespace + "/" + w.Name }

func firstAddr(w *state.Workload) netip.Addr {
	if len(w.Addrs) == 0 {
		return netip.Addr{}
	}
	return w.Addrs[0]
}

// findWorkload resolves a pod reference: an IP, NAMESPACE/NAME, NAME.NAMESPACE
// or NAME (in defaultNS).
func findWorkload(store *state.Store, cfg *meshConfig, defaultNS, ref string) (*state.Workload, error) {
	if ip, err := netip.ParseAddr(ref); err == nil {
		if w := store.WorkloadByAddr(ip); w != nil {
			return w, nil
		}
		return nil, fmt.Errorf("no workload has address %s", ip)
	}
	ns, name := defaultNS, ref
	if n, s, ok := strings.Cut(ref, "/"); ok {
		ns, name = n, s
	} else if n, s, ok := strings.Cut(ref, "."); ok {
		name, ns = n, s
	}
	for _, w := range cfg.Workloads {
		if w.GetNamespace() == ns && w.GetName() == name && len(w.GetAddresses()) > 0 {
			if ip, ok := netip.AddrFromSlice(w.GetAddresses()[0]); ok {
				if sw := store.WorkloadByAddr(ip); sw != nil {
					return sw, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("no workload %s/%s", ns, name)
}

// findService resolves a service reference: a VIP, a hostname, or
// NAME.NAMESPACE / NAME (in defaultNS) of a cluster.local service.
func findService(store *state.Store, cfg *meshConfig, defaultNS, ref string) *state.Service {
	if ip, err := netip.ParseAddr(ref); err == nil {
		return store.ServiceByVIP(ip)
	}
	if s := store.ServiceByHostname(ref); s != nil {
		return s
	}
	name, ns, ok := strings.Cut(ref, ".")
	if !ok {
		ns = defaultNS
	}
	ns, _, _ = strings.Cut(ns, ".")
	for _, s := range cfg.Services {
		if s.GetName() == name && s.GetNamespace() == ns {
			return store.ServiceByHostname(s.GetHostname())
		}
	}
	return nil
}

func renderExplanation(w io.Writer, e *Explanation) error {
	src := e.Source
	fmt.Fprintf(w, "%s (%s, node %s, %s) → %s\n", src.Workload, src.Address, orNone(src.Node), orNone(src.Identity), e.Destination)
	if e.Service != nil {
		tp := "per endpoint"
		if e.Service.TargetPort != 0 {
			tp = strconv.Itoa(int(e.Service.TargetPort))
		}
		fmt.Fprintf(w, "service %s, port %d → target port %s\n", e.Service.Name, e.Service.Port, tp)
	}
	for _, n := range e.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	for _, p := range e.Paths {
		fmt.Fprintf(w, "\nto %s (%s:%d, node %s): %s\n", p.Endpoint.Workload, p.Endpoint.Address, p.Port, orNone(p.Endpoint.Node), p.Verdict)
		for i, h := range p.Hops {
			role := h.Role
			if role == "waypoint" {
				role = "L7"
			}
			fmt.Fprintf(w, "  %d. %s, %s\n", i+1, h.Proxy, role)
			for _, d := range h.Does {
				fmt.Fprintf(w, "     - %s\n", d)
			}
			if h.Why != "" {
				fmt.Fprintf(w, "     why: %s\n", h.Why)
			}
			if h.Role == "waypoint" && h.L7Policies != nil {
				renderL7(w, h)
			} else if h.Role == "waypoint" && h.Policies != nil {
				if len(h.Policies) == 0 {
					fmt.Fprintf(w, "     L7 policies it holds: none\n")
				} else {
					fmt.Fprintf(w, "     L7 policies it holds: %s (each request is decided by the waypoint)\n", strings.Join(h.Policies, "; "))
				}
			}
			if h.Role == "inbound" && h.Decision != "" {
				if len(h.Policies) == 0 {
					fmt.Fprintf(w, "     policies: none apply\n")
				} else {
					fmt.Fprintf(w, "     policies: %s\n", strings.Join(h.Policies, "; "))
				}
				fmt.Fprintf(w, "     decision: %s", h.Decision)
				if h.DecidedBy != "" {
					fmt.Fprintf(w, ", decided by %s", h.DecidedBy)
				}
				fmt.Fprintln(w)
			}
		}
	}
	return nil
}
