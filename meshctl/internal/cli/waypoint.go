package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwac "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"
)

// Waypoint names, as istiod-lite's model (istiod-lite/model/waypoint.go)
// and Istio read them.
const (
	waypointClass            = "istio-waypoint"
	labelWaypointFor         = "istio.io/waypoint-for"
	labelDataplaneMode       = "istio.io/dataplane-mode"
	annotationForSA          = "istio.io/for-service-account" // our extension: a per-identity waypoint
	defaultWaypointName      = "waypoint"
	defaultWaypointTimeout   = 90 * time.Second
	waypointFieldManager     = "meshctl"
	waypointListenerName     = "mesh"
	waypointListenerPort     = 15008
	waypointListenerProtocol = "HBONE"
)

// trafficTypes are the values of istio.io/waypoint-for, sorted.
var trafficTypes = []string{"all", "none", "service", "workload"}

type waypointOptions struct {
	*Options
	name           string
	trafficType    string
	serviceAccount string
	enroll         bool
	overwrite      bool
	wait           bool
	timeout        time.Duration
	all            bool
	output         string
	poll           time.Duration // how often --wait reads the Gateway; 500ms
}

func newWaypointCmd(o *Options) *cobra.Command {
	wo := &waypointOptions{Options: o, poll: 500 * time.Millisecond}
	cmd := &cobra.Command{
		Use:   "waypoint",
		Short: "Manage waypoints: generate, apply, list, show the status of and delete waypoint Gateways",
		Long: `waypoint manages the waypoints of a namespace as istioctl waypoint does: a
waypoint is a Gateway of class istio-waypoint with one listener, mesh on port
15008 with protocol HBONE; istiod-lite deploys it and reports it Programmed
once its pod is ready. istio.io/waypoint-for on the Gateway says which traffic
it takes (service, the default; workload; all; none). --service-account SA
makes a per-identity waypoint: the annotation istio.io/for-service-account
binds it to the workloads of the namespace that run as SA (and the Services
whose pods all do), for service and workload traffic unless --for says
otherwise.

In local mode (--istiod) write the Gateway of waypoint generate into the config
directory instead of applying it.`,
		Example: `  meshctl waypoint apply -n demo --enroll-namespace --wait
  meshctl waypoint generate -n demo --for all
  meshctl waypoint apply -n demo --service-account reviews
  meshctl waypoint list -A
  meshctl waypoint status -n demo
  meshctl waypoint delete --all -n demo`,
		Args: cobra.NoArgs,
	}
	cmd.PersistentFlags().StringVar(&wo.name, "name", defaultWaypointName, "name of the waypoint (with --service-account: default SA-waypoint)")

	gen := &cobra.Command{
		Use:   "generate",
		Short: "Print a waypoint Gateway as YAML",
		Long: `generate prints the waypoint Gateway that apply would apply. Without -n the
Gateway names no namespace (kubectl apply -n puts it in one). Without --for it
carries no istio.io/waypoint-for label, so that its GatewayClass's label, else
"service", applies (as istioctl).`,
		Example: `  meshctl waypoint generate -n demo
  meshctl waypoint generate -n demo --for workload --name wl-waypoint
  meshctl waypoint generate -n demo --service-account reviews > reviews-waypoint.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns := ""
			if wo.Kube.Namespace != nil {
				ns = *wo.Kube.Namespace
			}
			gw, err := wo.gateway(cmd, ns)
			if err != nil {
				return err
			}
			b, err := gatewayYAML(gw)
			if err != nil {
				return err
			}
			_, err = wo.Out.Write(b)
			return err
		},
	}

	apply := &cobra.Command{
		Use:   "apply",
		Short: "Apply a waypoint Gateway (server-side apply), optionally wait until it is programmed and enroll the namespace",
		Long: `apply applies the Gateway of generate to the namespace (server-side apply,
field manager meshctl). --wait prints the Gateway's Programmed condition as it
changes and returns once it is True (or fails after --waypoint-timeout).
--enroll-namespace then labels the namespace istio.io/use-waypoint=NAME, so
that its Services use the waypoint; a namespace that already uses another
waypoint is left alone (with a warning) unless --overwrite.`,
		Example: `  meshctl waypoint apply -n demo
  meshctl waypoint apply -n demo --enroll-namespace --wait
  meshctl waypoint apply -n demo --name wl-waypoint --for workload -w --waypoint-timeout 2m
  meshctl waypoint apply -n demo --service-account reviews --wait`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return wo.runApply(cmd) },
	}
	for _, c := range []*cobra.Command{gen, apply} {
		c.Flags().StringVar(&wo.trafficType, "for", "", "traffic the waypoint takes: "+strings.Join(trafficTypes, ", ")+" (default: its GatewayClass's, else service; all with --service-account)")
		c.Flags().StringVar(&wo.serviceAccount, "service-account", "", "a per-identity waypoint: only for the workloads of the namespace that run as this ServiceAccount")
	}
	apply.Flags().BoolVar(&wo.enroll, "enroll-namespace", false, "label the namespace istio.io/use-waypoint=NAME once the waypoint is applied")
	apply.Flags().BoolVar(&wo.overwrite, "overwrite", false, "with --enroll-namespace: replace the waypoint the namespace already uses")
	apply.Flags().BoolVarP(&wo.wait, "wait", "w", false, "wait until the waypoint is programmed, printing its progress")
	apply.Flags().DurationVar(&wo.timeout, "waypoint-timeout", defaultWaypointTimeout, "how long --wait waits")

	list := &cobra.Command{
		Use:   "list",
		Short: "List the waypoints of a namespace (-A: all): NAME TRAFFIC TYPE PROGRAMMED",
		Long: `list lists the waypoint Gateways of the namespace (-A: of every namespace) in
istioctl's columns without REVISION: NAME, TRAFFIC TYPE and PROGRAMMED.
TRAFFIC TYPE is the traffic the waypoint takes as istiod-lite decides it: the
Gateway's istio.io/waypoint-for label, else all for a per-identity waypoint,
else its GatewayClass's label, else service (istioctl prints "none" when the
label is absent, which is not what the waypoint does). SERVICE ACCOUNT is shown
when a listed waypoint is a per-identity one.`,
		Example: `  meshctl waypoint list -n demo
  meshctl waypoint list -A -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return wo.runList(cmd.Context()) },
	}
	addOutputFlag(list, &wo.output)

	status := &cobra.Command{
		Use:   "status [NAME...]",
		Short: "Show the conditions of waypoints: NAME STATUS TYPE REASON MESSAGE",
		Long: `status shows the conditions istiod-lite wrote on the waypoint Gateways of the
namespace (-A: of every namespace; NAME... or --name: those only), one line
per condition (Accepted, Programmed). -w first waits until every one is
programmed, printing their progress to stderr (istioctl waits by default;
meshctl shows the status as it is unless asked).`,
		Example: `  meshctl waypoint status -n demo
  meshctl waypoint status -n demo waypoint --wait
  meshctl waypoint status -A -o yaml`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("name") {
				args = append(args, wo.name)
			}
			return wo.runStatus(cmd.Context(), args)
		},
	}
	addOutputFlag(status, &wo.output)
	status.Flags().BoolVarP(&wo.wait, "wait", "w", false, "wait until the waypoints are programmed")
	status.Flags().DurationVar(&wo.timeout, "waypoint-timeout", defaultWaypointTimeout, "how long --wait waits")

	del := &cobra.Command{
		Use:   "delete NAME... | --all",
		Short: "Delete waypoints of a namespace",
		Example: `  meshctl waypoint delete waypoint -n demo
  meshctl waypoint delete wl-waypoint reviews-waypoint -n demo
  meshctl waypoint delete --all -n demo`,
		Args: func(cmd *cobra.Command, args []string) error {
			if wo.all && len(args) > 0 {
				return errors.New("cannot name waypoints and delete --all")
			}
			if !wo.all && len(args) == 0 {
				return errors.New("name the waypoints to delete, or --all")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return wo.runDelete(cmd.Context(), args) },
	}
	del.Flags().BoolVar(&wo.all, "all", false, "delete every waypoint of the namespace")

	cmd.AddCommand(gen, apply, list, status, del)
	return cmd
}

// gateway returns the waypoint Gateway the flags describe, in namespace ns
// ("" names none).
func (wo *waypointOptions) gateway(cmd *cobra.Command, ns string) (*gwac.GatewayApplyConfiguration, error) {
	name := wo.name
	if wo.serviceAccount != "" {
		if errs := validation.IsDNS1123Subdomain(wo.serviceAccount); len(errs) > 0 {
			return nil, fmt.Errorf("--service-account %q: %s", wo.serviceAccount, errs[0])
		}
		if !cmd.Flags().Changed("name") {
			// Not the ServiceAccount's own name: istiod-lite runs the
			// waypoint as a ServiceAccount named after the Gateway, which
			// would then be the workloads' own.
			name = wo.serviceAccount + "-waypoint"
		}
	}
	if err := checkWaypointName(name); err != nil {
		return nil, err
	}
	gw := gwac.Gateway(name, ns).
		WithSpec(gwac.GatewaySpec().
			WithGatewayClassName(waypointClass).
			WithListeners(gwac.Listener().
				WithName(waypointListenerName).
				WithPort(waypointListenerPort).
				WithProtocol(waypointListenerProtocol)))
	if ns == "" {
		gw.Namespace = nil
	}
	if wo.trafficType != "" {
		if !slices.Contains(trafficTypes, wo.trafficType) {
			return nil, fmt.Errorf("--for %q: want one of %s", wo.trafficType, strings.Join(trafficTypes, ", "))
		}
		gw.WithLabels(map[string]string{labelWaypointFor: wo.trafficType})
	}
	if wo.serviceAccount != "" {
		gw.WithAnnotations(map[string]string{annotationForSA: wo.serviceAccount})
	}
	return gw, nil
}

// checkWaypointName refuses what cannot name a waypoint: "none" (it opts an
// object out in istio.io/use-waypoint) and what cannot name the Service
// istiod-lite deploys for it.
func checkWaypointName(name string) error {
	if name == "none" {
		return errors.New(`invalid waypoint name "none": it is reserved (istio.io/use-waypoint=none opts out)`)
	}
	if errs := validation.IsDNS1035Label(name); len(errs) > 0 {
		return fmt.Errorf("invalid waypoint name %q: %s", name, errs[0])
	}
	return nil
}

// gatewayYAML is gw as YAML, keys sorted (as kubectl and istioctl print).
func gatewayYAML(gw *gwac.GatewayApplyConfiguration) ([]byte, error) {
	b, err := yaml.Marshal(gw)
	if err != nil {
		return nil, fmt.Errorf("encoding the Gateway: %w", err)
	}
	return b, nil
}

// gatewayClients returns the Gateway API and core clients of the cluster,
// refusing local mode.
func (wo *waypointOptions) gatewayClients(what string) (gwclient.Interface, *kubeClient, error) {
	if wo.Local() {
		return nil, nil, fmt.Errorf("waypoint %s works on a cluster; in local mode write the Gateway of `meshctl waypoint generate` into the config directory", what)
	}
	kc, err := wo.kube()
	if err != nil {
		return nil, nil, err
	}
	gc, err := gwclient.NewForConfig(kc.rc)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway API client: %w", err)
	}
	return gc, kc, nil
}

func (wo *waypointOptions) runApply(cmd *cobra.Command) error {
	ctx := cmd.Context()
	if wo.enroll && wo.serviceAccount != "" {
		return errors.New("--enroll-namespace with --service-account: a per-identity waypoint binds its ServiceAccount's workloads by its annotation; enrolling the namespace would send every Service's traffic to it")
	}
	ns := wo.namespace()
	gw, err := wo.gateway(cmd, ns)
	if err != nil {
		return err
	}
	name := *gw.Name
	gc, kc, err := wo.gatewayClients("apply")
	if err != nil {
		return err
	}
	w := wo.Out
	if wo.enroll {
		nsObj, err := kc.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("namespace %s: %w", ns, err)
		}
		if cur := nsObj.Labels[labelUseWaypoint]; cur != "" && cur != name && !wo.overwrite {
			fmt.Fprintf(w, "⚠️ Warning: namespace %s already uses waypoint %q (%s=%s); add --overwrite to replace it\n", ns, cur, labelUseWaypoint, cur)
			return nil
		}
		if nsObj.Labels[labelDataplaneMode] != "ambient" {
			fmt.Fprintf(w, "⚠️ Warning: namespace %s is not in the ambient mesh; consider `kubectl label namespace %s %s=ambient`\n", ns, ns, labelDataplaneMode)
		}
	}
	applied, err := gc.GatewayV1().Gateways(ns).Apply(ctx, gw, metav1.ApplyOptions{FieldManager: waypointFieldManager})
	if err != nil {
		if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
			return fmt.Errorf("applying waypoint %s/%s: are the Gateway API CRDs installed? %w", ns, name, err)
		}
		return fmt.Errorf("applying waypoint %s/%s: %w", ns, name, err)
	}
	fmt.Fprintf(w, "✅ waypoint %s/%s applied\n", ns, name)
	if wo.wait {
		if err := wo.waitProgrammed(ctx, gc, w, applied); err != nil {
			return err
		}
	}
	if wo.enroll {
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, labelUseWaypoint, name)
		if _, err := kc.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: waypointFieldManager}); err != nil {
			return fmt.Errorf("labelling namespace %s: %w", ns, err)
		}
		fmt.Fprintf(w, "✅ namespace %s labeled with \"%s: %s\"\n", ns, labelUseWaypoint, name)
	}
	return nil
}

// waitProgrammed reads gw until its Programmed condition is True for its
// current generation, printing the condition to w each time it changes; it
// fails at once when the Gateway is not accepted, and after wo.timeout.
func (wo *waypointOptions) waitProgrammed(ctx context.Context, gc gwclient.Interface, w io.Writer, gw *gatewayv1.Gateway) error {
	ctx, cancel := context.WithTimeout(ctx, wo.timeout)
	defer cancel()
	key := gw.Namespace + "/" + gw.Name
	last := ""
	tick := time.NewTicker(wo.poll)
	defer tick.Stop()
	for {
		state, done, err := programmedState(gw)
		if err != nil {
			return fmt.Errorf("waypoint %s: %w", key, err)
		}
		if done {
			fmt.Fprintf(w, "✅ waypoint %s is ready!\n", key)
			return nil
		}
		if state != last {
			fmt.Fprintf(w, "⏳ waypoint %s: %s\n", key, state)
			last = state
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("timed out after %v waiting for waypoint %s to be programmed: %s", wo.timeout, key, state)
			}
			return ctx.Err()
		case <-tick.C:
		}
		cur, err := gc.GatewayV1().Gateways(gw.Namespace).Get(ctx, gw.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return fmt.Errorf("waypoint %s was deleted while waiting", key)
		case err != nil && ctx.Err() == nil:
			fmt.Fprintf(w, "⏳ waypoint %s: reading it: %v\n", key, err)
		case err == nil:
			gw = cur
		}
	}
}

// programmedState describes gw's progress towards Programmed: done once
// Programmed is True for the current generation; an error when the
// Gateway is not accepted (it never will be programmed as it is).
func programmedState(gw *gatewayv1.Gateway) (state string, done bool, err error) {
	cur := func(c *metav1.Condition) bool { return c != nil && c.ObservedGeneration >= gw.Generation }
	acc := meta.FindStatusCondition(gw.Status.Conditions, string(gatewayv1.GatewayConditionAccepted))
	if cur(acc) && acc.Status == metav1.ConditionFalse {
		return "", false, fmt.Errorf("not accepted: %s: %s", acc.Reason, acc.Message)
	}
	p := meta.FindStatusCondition(gw.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed))
	switch {
	case p == nil:
		return "Programmed: no status yet", false, nil
	case p.ObservedGeneration > 0 && !cur(p):
		// Written for an earlier spec (a re-apply that changed it).
		return fmt.Sprintf("Programmed=%s for generation %d, waiting for generation %d", p.Status, p.ObservedGeneration, gw.Generation), false, nil
	case p.Status == metav1.ConditionTrue:
		// Of this generation, or from a controller that does not say.
		return "Programmed=True", true, nil
	}
	s := fmt.Sprintf("Programmed=%s (%s)", p.Status, p.Reason)
	if p.Message != "" {
		s += ": " + p.Message
	}
	return s, false, nil
}

// listWaypoints returns the waypoint Gateways of ns ("" all), sorted by
// namespace and name.
func listWaypoints(ctx context.Context, gc gwclient.Interface, ns string) ([]gatewayv1.Gateway, error) {
	l, err := gc.GatewayV1().Gateways(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing Gateways: %w", err)
	}
	var out []gatewayv1.Gateway
	for _, gw := range l.Items {
		if gw.Spec.GatewayClassName == waypointClass {
			out = append(out, gw)
		}
	}
	slices.SortFunc(out, func(a, b gatewayv1.Gateway) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	return out, nil
}

// listNamespace is "" with -A, else the namespace.
func (wo *waypointOptions) listNamespace() string {
	if wo.AllNamespaces {
		return ""
	}
	return wo.namespace()
}

// waypointRow is one line of waypoint list.
type waypointRow struct {
	Namespace      string `json:"namespace"`
	Name           string `json:"name"`
	TrafficType    string `json:"trafficType"`
	ServiceAccount string `json:"serviceAccount,omitempty"`
	Programmed     string `json:"programmed"`
}

func (wo *waypointOptions) runList(ctx context.Context) error {
	if err := checkOutput(wo.output); err != nil {
		return err
	}
	gc, _, err := wo.gatewayClients("list")
	if err != nil {
		return err
	}
	gws, err := listWaypoints(ctx, gc, wo.listNamespace())
	if err != nil {
		return err
	}
	// The class's istio.io/waypoint-for is the default of its Gateways;
	// a user who may not read GatewayClasses gets the built-in default.
	class, err := gc.GatewayV1().GatewayClasses().Get(ctx, waypointClass, metav1.GetOptions{})
	if err != nil {
		class = nil
	}
	rows := waypointRows(gws, class)
	if wo.output != outTable {
		return printData(wo.Out, wo.output, rows)
	}
	return renderWaypointList(wo.Out, rows, wo.AllNamespaces)
}

// waypointRows are the list's rows of gws, whose GatewayClass is class
// (nil: unknown).
func waypointRows(gws []gatewayv1.Gateway, class *gatewayv1.GatewayClass) []waypointRow {
	rows := make([]waypointRow, 0, len(gws))
	for i := range gws {
		gw := &gws[i]
		programmed := "False" // as istioctl, when the condition is missing
		if c := meta.FindStatusCondition(gw.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed)); c != nil {
			programmed = string(c.Status)
		}
		rows = append(rows, waypointRow{
			Namespace:      gw.Namespace,
			Name:           gw.Name,
			TrafficType:    trafficType(gw, class),
			ServiceAccount: forServiceAccount(gw),
			Programmed:     programmed,
		})
	}
	return rows
}

// trafficType is the traffic gw takes as istiod-lite's model decides it:
// the Gateway's istio.io/waypoint-for, else all for a per-identity
// waypoint, else its class's label, else service.
func trafficType(gw *gatewayv1.Gateway, class *gatewayv1.GatewayClass) string {
	if t, ok := gw.Labels[labelWaypointFor]; ok {
		return t
	}
	if forServiceAccount(gw) != "" {
		return "all"
	}
	if class != nil {
		if t, ok := class.Labels[labelWaypointFor]; ok {
			return t
		}
	}
	return "service"
}

// forServiceAccount is the ServiceAccount of a per-identity waypoint (the
// annotation, also accepted as a label), or "".
func forServiceAccount(gw *gatewayv1.Gateway) string {
	return cmp.Or(gw.Annotations[annotationForSA], gw.Labels[annotationForSA])
}

// renderWaypointList writes istioctl's waypoint list table without
// REVISION, with SERVICE ACCOUNT when a row has one.
func renderWaypointList(w io.Writer, rows []waypointRow, allNamespaces bool) error {
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "No waypoints found.")
		return err
	}
	withSA := slices.ContainsFunc(rows, func(r waypointRow) bool { return r.ServiceAccount != "" })
	header := []string{"NAME", "TRAFFIC TYPE"}
	if withSA {
		header = append(header, "SERVICE ACCOUNT")
	}
	header = append(header, "PROGRAMMED")
	if allNamespaces {
		header = append([]string{"NAMESPACE"}, header...)
	}
	t := newTable(w, header...)
	for _, r := range rows {
		cols := []string{r.Name, r.TrafficType}
		if withSA {
			cols = append(cols, cmp.Or(r.ServiceAccount, "-"))
		}
		cols = append(cols, r.Programmed)
		if allNamespaces {
			cols = append([]string{r.Namespace}, cols...)
		}
		t.row(cols...)
	}
	return t.flush()
}

// waypointStatus is one waypoint of waypoint status.
type waypointStatus struct {
	Namespace  string                           `json:"namespace"`
	Name       string                           `json:"name"`
	Addresses  []gatewayv1.GatewayStatusAddress `json:"addresses,omitempty"`
	Conditions []metav1.Condition               `json:"conditions"`
}

func (wo *waypointOptions) runStatus(ctx context.Context, names []string) error {
	if err := checkOutput(wo.output); err != nil {
		return err
	}
	gc, _, err := wo.gatewayClients("status")
	if err != nil {
		return err
	}
	ns := wo.listNamespace()
	gws, err := listWaypoints(ctx, gc, ns)
	if err != nil {
		return err
	}
	if len(names) > 0 {
		var picked []gatewayv1.Gateway
		for _, n := range names {
			i := slices.IndexFunc(gws, func(gw gatewayv1.Gateway) bool { return gw.Name == n })
			if i < 0 {
				return fmt.Errorf("waypoint %s/%s not found", wo.namespace(), n)
			}
			picked = append(picked, gws[i])
		}
		gws = picked
	}
	if wo.wait {
		for i := range gws {
			if err := wo.waitProgrammed(ctx, gc, wo.ErrOut, &gws[i]); err != nil {
				return err
			}
			if cur, err := gc.GatewayV1().Gateways(gws[i].Namespace).Get(ctx, gws[i].Name, metav1.GetOptions{}); err == nil {
				gws[i] = *cur
			}
		}
	}
	sts := waypointStatuses(gws)
	if wo.output != outTable {
		return printData(wo.Out, wo.output, sts)
	}
	return renderWaypointStatus(wo.Out, sts, ns == "")
}

func waypointStatuses(gws []gatewayv1.Gateway) []waypointStatus {
	out := make([]waypointStatus, 0, len(gws))
	for _, gw := range gws {
		out = append(out, waypointStatus{Namespace: gw.Namespace, Name: gw.Name, Addresses: gw.Status.Addresses, Conditions: gw.Status.Conditions})
	}
	return out
}

// renderWaypointStatus writes one line per condition of each waypoint, in
// istioctl's columns: NAME STATUS TYPE REASON MESSAGE.
func renderWaypointStatus(w io.Writer, sts []waypointStatus, allNamespaces bool) error {
	if len(sts) == 0 {
		_, err := fmt.Fprintln(w, "No waypoints found.")
		return err
	}
	header := []string{"NAME", "STATUS", "TYPE", "REASON", "MESSAGE"}
	if allNamespaces {
		header = append([]string{"NAMESPACE"}, header...)
	}
	t := newTable(w, header...)
	for _, s := range sts {
		conds := s.Conditions
		if len(conds) == 0 {
			conds = []metav1.Condition{{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionUnknown, Message: "no status yet"}}
		}
		for _, c := range conds {
			cols := []string{s.Name, string(c.Status), c.Type, c.Reason, c.Message}
			if allNamespaces {
				cols = append([]string{s.Namespace}, cols...)
			}
			t.row(cols...)
		}
	}
	return t.flush()
}

func (wo *waypointOptions) runDelete(ctx context.Context, names []string) error {
	gc, kc, err := wo.gatewayClients("delete")
	if err != nil {
		return err
	}
	ns := wo.namespace()
	gws, err := listWaypoints(ctx, gc, ns)
	if err != nil {
		return err
	}
	if wo.all {
		for _, gw := range gws {
			names = append(names, gw.Name)
		}
		if len(names) == 0 {
			fmt.Fprintf(wo.Out, "no waypoints in namespace %s\n", ns)
			return nil
		}
	}
	var errs []error
	var deleted []string
	for _, n := range names {
		if !slices.ContainsFunc(gws, func(gw gatewayv1.Gateway) bool { return gw.Name == n }) {
			fmt.Fprintf(wo.Out, "waypoint %s/%s not found\n", ns, n)
			continue
		}
		err := gc.GatewayV1().Gateways(ns).Delete(ctx, n, metav1.DeleteOptions{})
		switch {
		case apierrors.IsNotFound(err):
			fmt.Fprintf(wo.Out, "waypoint %s/%s not found\n", ns, n)
		case err != nil:
			errs = append(errs, fmt.Errorf("deleting waypoint %s/%s: %w", ns, n, err))
		default:
			fmt.Fprintf(wo.Out, "waypoint %s/%s deleted\n", ns, n)
			deleted = append(deleted, n)
		}
	}
	// The namespace label names a waypoint that is gone: its Services'
	// traffic now has no waypoint to go to (istiod-lite reports them
	// unbound); say so rather than leave it silently.
	if nsObj, err := kc.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil {
		if cur := nsObj.Labels[labelUseWaypoint]; slices.Contains(deleted, cur) {
			fmt.Fprintf(wo.Out, "⚠️ Warning: namespace %s still uses waypoint %q; `kubectl label namespace %s %s-` removes the label\n", ns, cur, ns, labelUseWaypoint)
		}
	}
	return errors.Join(errs...)
}
