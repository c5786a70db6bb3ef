package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// requiredCRDs are the CRDs the mesh installs (crds/) and the version each
// must serve.
var requiredCRDs = []struct{ name, version string }{
	{"authorizationpolicies.security.istio.io", "v1"},
	{"peerauthentications.security.istio.io", "v1"},
	{"requestauthentications.security.istio.io", "v1"},
	{"gatewayclasses.gateway.networking.k8s.io", "v1"},
	{"gateways.gateway.networking.k8s.io", "v1"},
	{"httproutes.gateway.networking.k8s.io", "v1"},
	{"referencegrants.gateway.networking.k8s.io", "v1beta1"},
}

// rootExpiryWarning is how long before its expiry the CA root fails check.
const rootExpiryWarning = 30 * 24 * time.Hour

type checkOptions struct {
	*Options
	output string
}

// CheckResult is one line of check.
type CheckResult struct {
	OK      bool   `json:"ok"`
	Check   string `json:"check"`
	Message string `json:"message"`
}

func newCheckCmd(o *Options) *cobra.Command {
	co := &checkOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check an installation: CRDs, ztunnel on every node, CA root expiry, NetworkPolicies that block HBONE",
		Long: `check verifies that the mesh can work in the cluster and prints one ✔ or ✘
line per finding; it exits with status 1 when any check fails.

  crds            the CRDs of crds/ are installed and serve the version the mesh reads
  ztunnel         a ready ztunnel pod runs on every node
  ca-root         the root of ConfigMap istio-system/istio-ca-root-cert is valid
                  for at least 30 more days
  networkpolicy   no NetworkPolicy selecting ambient pods denies ingress on 15008
                  (HBONE)

In local mode (--istiod) it checks instead that istiod-lite answers and that
every connected proxy is SYNCED.`,
		Example: `  meshctl check
  meshctl check --context prod -o json
  meshctl check --istiod 127.10.0.1:15012 --istiod-ca _out/demo/state/root-cert.pem --istiod-token TOKEN`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return co.run(cmd.Context()) },
	}
	addOutputFlag(cmd, &co.output)
	return cmd
}

func (co *checkOptions) run(ctx context.Context) error {
	if err := checkOutput(co.output); err != nil {
		return err
	}
	var results []CheckResult
	if co.Local() {
		results = co.checkIstiod(ctx)
	} else {
		kc, err := co.kube()
		if err != nil {
			return err
		}
		dyn, err := dynamic.NewForConfig(kc.rc)
		if err != nil {
			return err
		}
		results = append(results, checkCRDs(ctx, dyn)...)
		results = append(results, checkZtunnels(ctx, kc)...)
		results = append(results, checkRoot(ctx, kc, clock())...)
		results = append(results, checkNetworkPolicies(ctx, kc)...)
	}
	if co.output != outTable {
		if err := printData(co.Out, co.output, results); err != nil {
			return err
		}
	} else {
		renderChecks(co.Out, results)
	}
	for _, r := range results {
		if !r.OK {
			return exitError{code: 1}
		}
	}
	return nil
}

func renderChecks(w io.Writer, results []CheckResult) {
	failed := 0
	for _, r := range results {
		mark := "✔"
		if !r.OK {
			mark = "✘"
			failed++
		}
		fmt.Fprintf(w, "%s %s: %s\n", mark, r.Check, r.Message)
	}
	if failed == 0 {
		fmt.Fprintln(w, "all checks passed")
	} else {
		fmt.Fprintf(w, "%d of %d checks failed\n", failed, len(results))
	}
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

func checkCRDs(ctx context.Context, dyn dynamic.Interface) []CheckResult {
	var out []CheckResult
	for _, want := range requiredCRDs {
		r := CheckResult{Check: "crds"}
		u, err := dyn.Resource(crdGVR).Get(ctx, want.name, metav1.GetOptions{})
		if err != nil {
			r.Message = fmt.Sprintf("%s is not installed (%v)", want.name, shortErr(err))
			out = append(out, r)
			continue
		}
		versions, _, _ := unstructuredSlice(u.Object, "spec", "versions")
		var served []string
		for _, v := range versions {
			m, _ := v.(map[string]any)
			if s, _ := m["served"].(bool); s {
				name, _ := m["name"].(string)
				served = append(served, name)
			}
		}
		bundle := ""
		if b := u.GetAnnotations()["gateway.networking.k8s.io/bundle-version"]; b != "" {
			bundle = ", bundle " + b
		}
		r.OK = slices.Contains(served, want.version)
		if r.OK {
			r.Message = fmt.Sprintf("%s serves %s%s", want.name, strings.Join(served, ","), bundle)
		} else {
			r.Message = fmt.Sprintf("%s serves %s, not %s%s", want.name, strings.Join(served, ","), want.version, bundle)
		}
		out = append(out, r)
	}
	return out
}

func unstructuredSlice(obj map[string]any, fields ...string) ([]any, bool, error) {
	var cur any = obj
	for _, f := range fields {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false, nil
		}
		cur = m[f]
	}
	s, ok := cur.([]any)
	return s, ok, nil
}

func checkZtunnels(ctx context.Context, kc *kubeClient) []CheckResult {
	nodes, err := kc.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return []CheckResult{{Check: "ztunnel", Message: "listing nodes: " + shortErr(err)}}
	}
	pods, err := kc.CoreV1().Pods(istioSystem).List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
	if err != nil {
		return []CheckResult{{Check: "ztunnel", Message: "listing ztunnel pods: " + shortErr(err)}}
	}
	ready := map[string]string{}
	for _, p := range pods.Items {
		if podReady(&p) {
			ready[p.Spec.NodeName] = p.Name
		}
	}
	var out []CheckResult
	names := make([]string, 0, len(nodes.Items))
	for _, n := range nodes.Items {
		names = append(names, n.Name)
	}
	slices.Sort(names)
	for _, n := range names {
		if pod, ok := ready[n]; ok {
			out = append(out, CheckResult{OK: true, Check: "ztunnel", Message: fmt.Sprintf("node %s: %s/%s is ready", n, istioSystem, pod)})
		} else {
			out = append(out, CheckResult{Check: "ztunnel", Message: fmt.Sprintf("node %s: no ready ztunnel pod (app=ztunnel in %s)", n, istioSystem)})
		}
	}
	if len(names) == 0 {
		out = append(out, CheckResult{Check: "ztunnel", Message: "the cluster has no node"})
	}
	return out
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func checkRoot(ctx context.Context, kc *kubeClient, now time.Time) []CheckResult {
	r := CheckResult{Check: "ca-root"}
	cm, err := kc.CoreV1().ConfigMaps(istioSystem).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
	if err != nil {
		r.Message = fmt.Sprintf("ConfigMap %s/istio-ca-root-cert: %s", istioSystem, shortErr(err))
		return []CheckResult{r}
	}
	block, _ := pem.Decode([]byte(cm.Data["root-cert.pem"]))
	if block == nil {
		r.Message = fmt.Sprintf("ConfigMap %s/istio-ca-root-cert holds no PEM root-cert.pem", istioSystem)
		return []CheckResult{r}
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		r.Message = "root-cert.pem: " + err.Error()
		return []CheckResult{r}
	}
	left := cert.NotAfter.Sub(now)
	switch {
	case left <= 0:
		r.Message = fmt.Sprintf("the root expired at %s", cert.NotAfter.UTC().Format(time.RFC3339))
	case left < rootExpiryWarning:
		r.Message = fmt.Sprintf("the root expires at %s, in %s: rotate it", cert.NotAfter.UTC().Format(time.RFC3339), shortDuration(left))
	default:
		r.OK = true
		r.Message = fmt.Sprintf("the root is valid until %s (%s)", cert.NotAfter.UTC().Format(time.RFC3339), shortDuration(left))
	}
	return []CheckResult{r}
}

// checkNetworkPolicies finds the NetworkPolicies of ambient namespaces that
// restrict ingress to pods without allowing TCP 15008, the HBONE port
// every ambient pod must accept.
func checkNetworkPolicies(ctx context.Context, kc *kubeClient) []CheckResult {
	nss, err := kc.CoreV1().Namespaces().List(ctx, metav1.ListOptions{LabelSelector: "istio.io/dataplane-mode=ambient"})
	if err != nil {
		return []CheckResult{{Check: "networkpolicy", Message: "listing ambient namespaces: " + shortErr(err)}}
	}
	var out []CheckResult
	for _, ns := range nss.Items {
		nps, err := kc.NetworkingV1().NetworkPolicies(ns.Name).List(ctx, metav1.ListOptions{})
		if err != nil {
			out = append(out, CheckResult{Check: "networkpolicy", Message: fmt.Sprintf("listing NetworkPolicies in %s: %s", ns.Name, shortErr(err))})
			continue
		}
		for _, np := range nps.Items {
			if !blocksHBONE(&np) {
				continue
			}
			sel, _ := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			who := "every pod"
			if sel != nil && !sel.Empty() {
				who = "pods " + sel.String()
			}
			out = append(out, CheckResult{Check: "networkpolicy", Message: fmt.Sprintf("NetworkPolicy %s/%s restricts ingress to %s without allowing TCP 15008 (HBONE): mesh traffic to them is dropped", np.Namespace, np.Name, who)})
		}
	}
	if len(out) == 0 {
		out = append(out, CheckResult{OK: true, Check: "networkpolicy", Message: fmt.Sprintf("no NetworkPolicy of the %d ambient namespaces blocks TCP 15008", len(nss.Items))})
	}
	return out
}

// blocksHBONE reports whether np restricts ingress and none of its ingress
// rules admits TCP 15008 from any peer.
func blocksHBONE(np *networkingv1.NetworkPolicy) bool {
	ingress := len(np.Spec.PolicyTypes) == 0 // default: Ingress
	for _, t := range np.Spec.PolicyTypes {
		if t == networkingv1.PolicyTypeIngress {
			ingress = true
		}
	}
	if !ingress {
		return false
	}
	for _, rule := range np.Spec.Ingress {
		if len(rule.Ports) == 0 {
			return false
		}
		for _, p := range rule.Ports {
			if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
				continue
			}
			if p.Port == nil {
				return false
			}
			if p.Port.IntValue() == 15008 {
				return false
			}
			if p.EndPort != nil && p.Port.IntValue() <= 15008 && 15008 <= int(*p.EndPort) {
				return false
			}
		}
	}
	return true
}

// checkIstiod is local mode's check: istiod-lite answers and every proxy
// is in sync.
func (co *checkOptions) checkIstiod(ctx context.Context) []CheckResult {
	conn, err := co.dialIstiod(ctx)
	if err != nil {
		return []CheckResult{{Check: "istiod", Message: err.Error()}}
	}
	defer conn.Close()
	cctx, err := co.istiodContext(ctx)
	if err != nil {
		return []CheckResult{{Check: "istiod", Message: err.Error()}}
	}
	resp, err := statusv3.NewClientStatusDiscoveryServiceClient(conn).FetchClientStatus(cctx, &statusv3.ClientStatusRequest{})
	if err != nil {
		return []CheckResult{{Check: "istiod", Message: fmt.Sprintf("istiod-lite at %s: %s", co.Istiod, status.Convert(err).Message())}}
	}
	rows := proxyRows(resp)
	out := []CheckResult{{OK: true, Check: "istiod", Message: fmt.Sprintf("istiod-lite at %s answers; %d proxies connected", co.Istiod, len(rows))}}
	for _, r := range rows {
		res := CheckResult{OK: true, Check: "proxy"}
		var bad []string
		for _, s := range r.Sync {
			if s.Status != "SYNCED" {
				bad = append(bad, columnOf(s.Type)+" "+s.Status)
			}
		}
		if len(bad) > 0 {
			res.OK = false
			res.Message = fmt.Sprintf("%s %s: %s", r.Type, r.Name, strings.Join(bad, ", "))
		} else {
			res.Message = fmt.Sprintf("%s %s: SYNCED", r.Type, r.Name)
		}
		out = append(out, res)
	}
	return out
}

// shortErr is err's message without the API machinery's wrapping.
func shortErr(err error) string {
	return err.Error()
}
