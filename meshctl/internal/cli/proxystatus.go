package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/pkg/workloadapi"
)

type proxyStatusOptions struct {
	*Options
	output string
	certs  bool
}

func newProxyStatusCmd(o *Options) *cobra.Command {
	po := &proxyStatusOptions{Options: o}
	cmd := &cobra.Command{
		Use:     "proxy-status",
		Aliases: []string{"ps"},
		Short:   "List every ztunnel and waypoint connected to istiod-lite, its xDS sync state and certificate expiry",
		Long: `proxy-status asks istiod-lite which proxies hold an xDS stream and, per type
of resource, whether each proxy holds what istiod-lite last sent it:

  SYNCED    the proxy ACKed the latest push and nothing is pending
  STALE     a push is not ACKed yet, or changes wait to be sent
  ERROR     the proxy rejected (NACKed) the latest push
  NOT SENT  nothing was sent yet

(vN) is the version the proxy ACKed: istiod-lite's generation of that type.
CERT EXPIRY is the earliest expiry of the certificates a ztunnel (its
workloads') or waypoint (its own) holds, read from its admin server (in local
mode only for the proxies named by --proxy-admin: NODE for a ztunnel,
NAMESPACE/NAME for a waypoint); "-" when it cannot be read.

istiod-lite authenticates the caller: in local mode with a token of its config
directory (--istiod-token), in a cluster with the kubeconfig's credentials,
for users who may list pods in all namespaces.`,
		Example: `  meshctl proxy-status
  meshctl proxy-status --istiod 127.10.0.1:15012 --istiod-ca _out/demo/state/root-cert.pem \
      --istiod-token TOKEN --proxy-admin node-a=127.10.1.1:15000
  meshctl proxy-status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return po.run(cmd.Context()) },
	}
	addOutputFlag(cmd, &po.output)
	cmd.Flags().BoolVar(&po.certs, "certs", true, "read each proxy's certificate expiry from its admin server")
	return cmd
}

// proxyRow is one proxy of the listing.
type proxyRow struct {
	Name       string       `json:"name"`
	Type       string       `json:"type"`
	NodeID     string       `json:"nodeID"`
	Sync       []typeStatus `json:"sync"`
	CertExpiry *time.Time   `json:"certExpiry,omitempty"`
}

type typeStatus struct {
	Type        string     `json:"type"`
	Status      string     `json:"status"`
	Version     string     `json:"version,omitempty"`
	LastUpdated *time.Time `json:"lastUpdated,omitempty"`
	Error       string     `json:"error,omitempty"`
}

func (po *proxyStatusOptions) run(ctx context.Context) error {
	if err := checkOutput(po.output); err != nil {
		return err
	}
	conn, err := po.dialIstiod(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	cctx, err := po.istiodContext(ctx)
	if err != nil {
		return err
	}
	resp, err := statusv3.NewClientStatusDiscoveryServiceClient(conn).FetchClientStatus(cctx, &statusv3.ClientStatusRequest{})
	if err != nil {
		return fmt.Errorf("proxy status from istiod-lite: %s", status.Convert(err).Message())
	}
	rows := proxyRows(resp)
	if po.certs {
		for i := range rows {
			rows[i].CertExpiry = po.certExpiry(ctx, rows[i])
		}
	}
	if po.output != outTable {
		return printData(po.Out, po.output, rows)
	}
	return renderProxyStatus(po.Out, rows, clock())
}

// certExpiry reads the earliest expiry of the certificates a ztunnel or
// waypoint holds from its admin server; nil when it cannot be read.
func (po *proxyStatusOptions) certExpiry(ctx context.Context, r proxyRow) *time.Time {
	var a *proxyAdmin
	switch {
	case r.Type != "ztunnel" && r.Type != "waypoint":
		return nil
	case po.Local() || len(po.ProxyAdmin) > 0:
		a = po.localAdmin(ctx, r)
	default:
		kc, err := po.kube()
		if err != nil {
			return nil
		}
		pod, err := kc.CoreV1().Pods(podNamespace(r.Name)).Get(ctx, podName(r.Name), metav1.GetOptions{})
		if err != nil {
			return nil
		}
		addr, stop, err := kc.portForward(ctx, pod, 15000)
		if err != nil {
			return nil
		}
		a = &proxyAdmin{name: r.Name, addr: addr, stop: stop}
	}
	if a == nil {
		return nil
	}
	defer a.close()
	d, err := a.configDump(ctx)
	if err != nil || len(d.Certificates) == 0 {
		return nil
	}
	first := d.Certificates[0].NotAfter
	for _, c := range d.Certificates[1:] {
		if c.NotAfter.Before(first) {
			first = c.NotAfter
		}
	}
	return &first
}

// localAdmin finds the admin server of row r among --proxy-admin: NODE for
// a ztunnel; for a waypoint (whose row names its pod) NAMESPACE/POD, else
// the NAMESPACE/GATEWAY entry whose waypoint says it is that pod. Nil when
// none is given.
func (po *proxyStatusOptions) localAdmin(ctx context.Context, r proxyRow) *proxyAdmin {
	if r.Type == "ztunnel" {
		node := strings.TrimPrefix(strings.TrimSuffix(r.Name, ".istio-system"), "ztunnel-")
		if addr, ok := po.ProxyAdmin[node]; ok {
			return &proxyAdmin{name: node, addr: addr}
		}
		return nil
	}
	ns, pod := podNamespace(r.Name), podName(r.Name)
	if addr, ok := po.ProxyAdmin[ns+"/"+pod]; ok {
		return &proxyAdmin{name: ns + "/" + pod, addr: addr}
	}
	for _, key := range slices.Sorted(maps.Keys(po.ProxyAdmin)) {
		if !strings.HasPrefix(key, ns+"/") {
			continue
		}
		a := &proxyAdmin{name: key, addr: po.ProxyAdmin[key]}
		if d, err := a.waypointDump(ctx); err == nil && d.Pod == pod {
			return a
		}
	}
	return nil
}

// proxyRows turns istiod-lite's answer into rows, sorted by type and name.
func proxyRows(resp *statusv3.ClientStatusResponse) []proxyRow {
	var rows []proxyRow
	for _, c := range resp.GetConfig() {
		id := c.GetNode().GetId()
		r := proxyRow{NodeID: id, Name: id, Type: "unknown"}
		// Istio's node id: <type>~<ip>~<pod>.<namespace>~<domain>.
		if parts := strings.Split(id, "~"); len(parts) == 4 {
			r.Name = parts[2]
			switch parts[0] {
			case "ztunnel":
				r.Type = "ztunnel"
			case "router":
				r.Type = "waypoint"
			default:
				r.Type = parts[0]
			}
		}
		for _, g := range c.GetGenericXdsConfigs() {
			ts := typeStatus{Type: g.GetTypeUrl(), Status: strings.ReplaceAll(g.GetConfigStatus().String(), "_", " "), Version: g.GetVersionInfo()}
			if g.GetLastUpdated() != nil {
				t := g.GetLastUpdated().AsTime()
				ts.LastUpdated = &t
			}
			if e := g.GetErrorState(); e != nil {
				ts.Error = e.GetDetails()
			}
			r.Sync = append(r.Sync, ts)
		}
		rows = append(rows, r)
	}
	slices.SortStableFunc(rows, func(a, b proxyRow) int {
		if c := strings.Compare(a.Type, b.Type); c != 0 {
			return -c // ztunnel before waypoint
		}
		return strings.Compare(a.Name, b.Name)
	})
	return rows
}

// typeColumns names the columns of the types, in a fixed order: the
// Workload API's types first.
var typeColumns = map[string]string{
	workloadapi.AddressTypeURL:               "ADDRESSES",
	workloadapi.AuthorizationTypeURL:         "AUTHORIZATION",
	workloadapi.WaypointAuthorizationTypeURL: "L7 AUTHORIZATION",
	workloadapi.WaypointRoutesTypeURL:        "ROUTES",
}

func columnOf(typeURL string) string {
	if c, ok := typeColumns[typeURL]; ok {
		return c
	}
	return strings.ToUpper(path.Ext(typeURL)[1:])
}

func renderProxyStatus(w io.Writer, rows []proxyRow, now time.Time) error {
	if len(rows) == 0 {
		fmt.Fprintln(w, "no proxy is connected to istiod-lite")
		return nil
	}
	var types []string
	for _, r := range rows {
		for _, s := range r.Sync {
			if !slices.Contains(types, s.Type) {
				types = append(types, s.Type)
			}
		}
	}
	order := []string{workloadapi.AddressTypeURL, workloadapi.AuthorizationTypeURL, workloadapi.WaypointAuthorizationTypeURL, workloadapi.WaypointRoutesTypeURL}
	slices.SortStableFunc(types, func(a, b string) int {
		ia, ib := slices.Index(order, a), slices.Index(order, b)
		if ia < 0 {
			ia = len(order)
		}
		if ib < 0 {
			ib = len(order)
		}
		if ia != ib {
			return ia - ib
		}
		return strings.Compare(a, b)
	})
	header := []string{"NAME", "TYPE"}
	for _, t := range types {
		header = append(header, columnOf(t))
	}
	header = append(header, "CERT EXPIRY")
	t := newTable(w, header...)
	for _, r := range rows {
		cols := []string{r.Name, r.Type}
		for _, typ := range types {
			cell := "-"
			for _, s := range r.Sync {
				if s.Type == typ {
					cell = s.Status
					if s.Version != "" {
						cell += " (v" + s.Version + ")"
					}
				}
			}
			cols = append(cols, cell)
		}
		exp := "-"
		if r.CertExpiry != nil {
			exp = r.CertExpiry.UTC().Format(time.RFC3339) + " (" + shortDuration(r.CertExpiry.Sub(now)) + ")"
		}
		t.row(append(cols, exp)...)
	}
	return t.flush()
}

// shortDuration is d rounded for reading: "23h59m", "5m", "expired".
func shortDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "expired"
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	}
}

func podName(name string) string      { n, _, _ := strings.Cut(name, "."); return n }
func podNamespace(name string) string { _, ns, _ := strings.Cut(name, "."); return ns }
