package model

import (
	"maps"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
)

// Builders for waypoint test inputs.

type gwOpt func(*gatewayv1.Gateway)

// waypointGateway returns a waypoint Gateway with Istio's listener
// {mesh, 15008, HBONE}.
func waypointGateway(ns, name string, opts ...gwOpt) *gatewayv1.Gateway {
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 3},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: WaypointGatewayClass,
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}
	for _, o := range opts {
		o(gw)
	}
	return gw
}

func gwLabel(k, v string) gwOpt {
	return func(g *gatewayv1.Gateway) {
		if g.Labels == nil {
			g.Labels = map[string]string{}
		}
		g.Labels[k] = v
	}
}

func gwAnnotation(k, v string) gwOpt {
	return func(g *gatewayv1.Gateway) { g.Annotations = map[string]string{k: v} }
}

func allowedFrom(from gatewayv1.FromNamespaces, sel map[string]string) gwOpt {
	return func(g *gatewayv1.Gateway) {
		ns := &gatewayv1.RouteNamespaces{From: &from}
		if sel != nil {
			ns.Selector = &metav1.LabelSelector{MatchLabels: sel}
		}
		g.Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: ns}
	}
}

// waypointService is the Service the deployer creates for a waypoint.
func waypointService(ns, name, clusterIP string) *corev1.Service {
	s := service(ns, name, map[string]string{LabelGatewayName: name}, []string{clusterIP},
		port(15021, intstr.FromInt32(15021)), port(15008, intstr.FromInt32(15008)))
	s.Labels = map[string]string{LabelGatewayManaged: GatewayManagedMesh, LabelGatewayName: name}
	return s
}

// waypointPod is a ready pod of a waypoint, as the deployer labels it.
func waypointPod(ns, gw, podIP string) *corev1.Pod {
	return with(pod(ns, gw+"-0", map[string]string{LabelGatewayName: gw, LabelDataplaneMode: DataplaneModeNone}, podIP), serviceAccountName(gw))
}

// readyWaypoint returns a waypoint Gateway with its Service and a ready pod.
func readyWaypoint(ns, name, clusterIP, podIP string, opts ...gwOpt) (*gatewayv1.Gateway, *corev1.Service, *corev1.Pod) {
	return waypointGateway(ns, name, opts...), waypointService(ns, name, clusterIP), waypointPod(ns, name, podIP)
}

func gwAddr(ns, name string) *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{
		Destination:   &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: ns, Hostname: name + "." + ns + ".svc.cluster.local"}},
		HboneMtlsPort: 15008,
	}
}

func labelled(s *corev1.Service, kv ...string) *corev1.Service {
	if s.Labels == nil {
		s.Labels = map[string]string{}
	}
	for i := 0; i+1 < len(kv); i += 2 {
		s.Labels[kv[i]] = kv[i+1]
	}
	return s
}

func podLabel(k, v string) podOpt { return func(p *corev1.Pod) { p.Labels[k] = v } }

// world is a namespace "app" holding a waypoint "wp" (ready) and an echo
// Service with one pod, each editable.
type world struct {
	namespaces []*corev1.Namespace
	gateways   []*gatewayv1.Gateway
	classes    []*gatewayv1.GatewayClass
	services   []*corev1.Service
	pods       []*corev1.Pod
}

func (w world) inputs() *Inputs {
	return &Inputs{Namespaces: w.namespaces, Gateways: w.gateways, GatewayClasses: w.classes, Services: w.services, Pods: w.pods}
}

const (
	echoSvc  = "app/echo.app.svc.cluster.local"
	echoPod  = "Kubernetes//Pod/app/echo-0"
	otherSvc = "app/other.app.svc.cluster.local"
	otherPod = "Kubernetes//Pod/app/other-0"
	wpSvc    = "app/wp.app.svc.cluster.local"
	wpPod    = "Kubernetes//Pod/app/wp-0"
)

func newWorld(nsLabels map[string]string, edit func(*world)) *Inputs {
	gw, wsvc, wpod := readyWaypoint("app", "wp", "10.96.0.100", "10.0.0.100")
	w := world{
		namespaces: []*corev1.Namespace{namespace("app", nsLabels)},
		gateways:   []*gatewayv1.Gateway{gw},
		services: []*corev1.Service{
			wsvc,
			service("app", "echo", map[string]string{"app": "echo"}, []string{"10.96.0.1"}, port(80, intstr.FromInt32(8080))),
		},
		pods: []*corev1.Pod{
			wpod,
			with(pod("app", "echo-0", map[string]string{"app": "echo"}, "10.0.0.1"), serviceAccountName("echo")),
		},
	}
	if edit != nil {
		edit(&w)
	}
	return w.inputs()
}

// waypointsOf returns the waypoint of every address that has one.
func waypointsOf(out *Output) map[string]*workloadapi.GatewayAddress {
	m := map[string]*workloadapi.GatewayAddress{}
	for k, a := range out.Addresses {
		var wp *workloadapi.GatewayAddress
		if w := a.GetWorkload(); w != nil {
			wp = w.GetWaypoint()
		} else {
			wp = a.GetService().GetWaypoint()
		}
		if wp != nil {
			m[k] = wp
		}
	}
	return m
}

// boundStatuses returns the WaypointBound condition of every Service.
func boundStatuses(out *Output) map[string]PolicyCondition {
	m := map[string]PolicyCondition{}
	for _, st := range out.PolicyStatuses {
		if st.Kind == KindService {
			m[st.Namespace+"/"+st.Name] = st.Conditions[0]
		}
	}
	return m
}

func bound(wp string) PolicyCondition {
	return PolicyCondition{Type: ConditionWaypointBound, Status: "True", Reason: ReasonWaypointAccepted, Message: "Successfully attached to waypoint " + wp}
}

func notBound(reason, msg string) PolicyCondition {
	return PolicyCondition{Type: ConditionWaypointBound, Status: "False", Reason: reason, Message: msg}
}

// TestWaypointBinding checks Build's Service.waypoint, Workload.waypoint
// and Service WaypointBound conditions for the ways of asking for a
// waypoint.
func TestWaypointBinding(t *testing.T) {
	ambient := map[string]string{LabelDataplaneMode: DataplaneModeAmbient}
	useWP := map[string]string{LabelDataplaneMode: DataplaneModeAmbient, LabelUseWaypoint: "wp"}
	wpNotReady := func(wp string) PolicyCondition {
		return notBound(ReasonWaypointIsNotReady, `waypoint "`+wp+`" is not ready`)
	}
	tests := []struct {
		name       string
		in         *Inputs
		want       map[string]*workloadapi.GatewayAddress // address key → waypoint
		wantStatus map[string]PolicyCondition             // Service → WaypointBound
	}{
		{
			name: "no label: nothing bound, no status",
			in:   newWorld(ambient, nil),
		},
		{
			name:       "namespace label binds its services, not its pods (service waypoint)",
			in:         newWorld(useWP, nil),
			want:       map[string]*workloadapi.GatewayAddress{echoSvc: gwAddr("app", "wp")},
			wantStatus: map[string]PolicyCondition{"app/echo": bound("app/wp")},
		},
		{
			name: "service label beats namespace label",
			in: newWorld(useWP, func(w *world) {
				gw, s, p := readyWaypoint("app", "wp2", "10.96.0.102", "10.0.0.102")
				w.gateways, w.services, w.pods = append(w.gateways, gw), append(w.services, s), append(w.pods, p)
				labelled(w.services[1], LabelUseWaypoint, "wp2")
			}),
			want:       map[string]*workloadapi.GatewayAddress{echoSvc: gwAddr("app", "wp2")},
			wantStatus: map[string]PolicyCondition{"app/echo": bound("app/wp2")},
		},
		{
			name: "service label none opts out of the namespace's waypoint",
			in: newWorld(useWP, func(w *world) {
				labelled(w.services[1], LabelUseWaypoint, "none")
			}),
		},
		{
			name: "pod label binds a workload waypoint",
			in: newWorld(ambient, func(w *world) {
				w.gateways[0] = waypointGateway("app", "wp", gwLabel(LabelWaypointFor, WaypointForWorkload))
				with(w.pods[1], podLabel(LabelUseWaypoint, "wp"))
			}),
			want: map[string]*workloadapi.GatewayAddress{echoPod: gwAddr("app", "wp")},
		},
		{
			name: "pod label on a service waypoint binds nothing",
			in: newWorld(ambient, func(w *world) {
				with(w.pods[1], podLabel(LabelUseWaypoint, "wp"))
			}),
		},
		{
			name: "pod label none opts out of the namespace's workload waypoint",
			in: newWorld(useWP, func(w *world) {
				w.gateways[0] = waypointGateway("app", "wp", gwLabel(LabelWaypointFor, WaypointForWorkload))
				with(w.pods[1], podLabel(LabelUseWaypoint, "none"))
			}),
			wantStatus: map[string]PolicyCondition{"app/echo": notBound(ReasonUnsupportedTrafficType,
				`attempting to bind to traffic type "service" which the waypoint "app/wp" does not support`)},
		},
		{
			name: "waypoint-for all: services and pods, never the waypoint's own pod and Service",
			in: newWorld(useWP, func(w *world) {
				w.gateways[0] = waypointGateway("app", "wp", gwLabel(LabelWaypointFor, WaypointForAll))
			}),
			want:       map[string]*workloadapi.GatewayAddress{echoSvc: gwAddr("app", "wp"), echoPod: gwAddr("app", "wp")},
			wantStatus: map[string]PolicyCondition{"app/echo": bound("app/wp")},
		},
		{
			name: "the waypoint's own pod and Service are not bound even when labelled",
			in: newWorld(ambient, func(w *world) {
				w.gateways[0] = waypointGateway("app", "wp", gwLabel(LabelWaypointFor, WaypointForAll))
				labelled(w.services[0], LabelUseWaypoint, "wp")
				with(w.pods[0], podLabel(LabelUseWaypoint, "wp"))
			}),
		},
		{
			name: "waypoint-for from the GatewayClass",
			in: newWorld(useWP, func(w *world) {
				w.classes = []*gatewayv1.GatewayClass{{ObjectMeta: metav1.ObjectMeta{Name: WaypointGatewayClass, Labels: map[string]string{LabelWaypointFor: WaypointForWorkload}}}}
			}),
			want: map[string]*workloadapi.GatewayAddress{echoPod: gwAddr("app", "wp")},
			wantStatus: map[string]PolicyCondition{"app/echo": notBound(ReasonUnsupportedTrafficType,
				`attempting to bind to traffic type "service" which the waypoint "app/wp" does not support`)},
		},
		{
			name: "the Gateway's waypoint-for beats its class's",
			in: newWorld(useWP, func(w *world) {
				w.classes = []*gatewayv1.GatewayClass{{ObjectMeta: metav1.ObjectMeta{Name: WaypointGatewayClass, Labels: map[string]string{LabelWaypointFor: WaypointForWorkload}}}}
				w.gateways[0] = waypointGateway("app", "wp", gwLabel(LabelWaypointFor, WaypointForService))
			}),
			want:       map[string]*workloadapi.GatewayAddress{echoSvc: gwAddr("app", "wp")},
			wantStatus: map[string]PolicyCondition{"app/echo": bound("app/wp")},
		},
		{
			name: "waypoint-for none serves nothing",
			in: newWorld(useWP, func(w *world) {
				w.gateways[0] = waypointGateway("app", "wp", gwLabel(LabelWaypointFor, WaypointForNone))
			}),
			wantStatus: map[string]PolicyCondition{"app/echo": notBound(ReasonUnsupportedTrafficType,
				`attempting to bind to traffic type "service" which the waypoint "app/wp" does not support`)},
		},
		{
			name:       "a missing waypoint is not ready",
			in:         newWorld(map[string]string{LabelUseWaypoint: "nope"}, nil),
			wantStatus: map[string]PolicyCondition{"app/echo": wpNotReady("app/nope")},
		},
		{
			name: "no Service yet: no addresses, not bound",
			in: newWorld(useWP, func(w *world) {
				w.services = w.services[1:]
			}),
			wantStatus: map[string]PolicyCondition{"app/echo": wpNotReady("app/wp")},
		},
		{
			name: "Service without a ready pod: no addresses, not bound",
			in: newWorld(useWP, func(w *world) {
				with(w.pods[0], notReady())
			}),
			wantStatus: map[string]PolicyCondition{"app/echo": wpNotReady("app/wp")},
		},
		{
			name: "addresses once reported stay while the Service does",
			in: newWorld(useWP, func(w *world) {
				with(w.pods[0], notReady())
				hostType := gatewayv1.HostnameAddressType
				w.gateways[0].Status.Addresses = []gatewayv1.GatewayStatusAddress{{Type: &hostType, Value: "wp.app.svc.cluster.local"}}
			}),
			want:       map[string]*workloadapi.GatewayAddress{echoSvc: gwAddr("app", "wp")},
			wantStatus: map[string]PolicyCondition{"app/echo": bound("app/wp")},
		},
		{
			name: "wrong listener: not bound",
			in: newWorld(useWP, func(w *world) {
				w.gateways[0].Spec.Listeners[0].Protocol = "HTTP"
			}),
			wantStatus: map[string]PolicyCondition{"app/echo": wpNotReady("app/wp")},
		},
		{
			name: "a Gateway of another class is no waypoint",
			in: newWorld(useWP, func(w *world) {
				w.gateways[0].Spec.GatewayClassName = "istio"
			}),
			wantStatus: map[string]PolicyCondition{"app/echo": wpNotReady("app/wp")},
		},
		{
			name: "cross-namespace use denied by default (allowedRoutes Same)",
			in: newWorld(map[string]string{LabelUseWaypoint: "wp", LabelUseWaypointNamespace: "mesh"}, func(w *world) {
				gw, s, p := readyWaypoint("mesh", "wp", "10.96.0.200", "10.0.0.200")
				w.namespaces = append(w.namespaces, namespace("mesh", nil))
				w.gateways, w.services, w.pods = append(w.gateways, gw), append(w.services, s), append(w.pods, p)
			}),
			wantStatus: map[string]PolicyCondition{"app/echo": notBound(ReasonAttachmentDenied,
				`we are not permitted to attach to waypoint "mesh/wp" (missing allowedRoutes?)`)},
		},
		{
			name: "cross-namespace use allowed by allowedRoutes All",
			in: newWorld(map[string]string{LabelUseWaypoint: "wp", LabelUseWaypointNamespace: "mesh"}, func(w *world) {
				gw, s, p := readyWaypoint("mesh", "wp", "10.96.0.200", "10.0.0.200", allowedFrom(gatewayv1.NamespacesFromAll, nil))
				w.namespaces = append(w.namespaces, namespace("mesh", nil))
				w.gateways, w.services, w.pods = append(w.gateways, gw), append(w.services, s), append(w.pods, p)
			}),
			want:       map[string]*workloadapi.GatewayAddress{echoSvc: gwAddr("mesh", "wp")},
			wantStatus: map[string]PolicyCondition{"app/echo": bound("mesh/wp")},
		},
		{
			name: "cross-namespace use allowed by a selector on the namespace's labels (service label)",
			in: newWorld(map[string]string{"team": "a"}, func(w *world) {
				gw, s, p := readyWaypoint("mesh", "wp", "10.96.0.200", "10.0.0.200", allowedFrom(gatewayv1.NamespacesFromSelector, map[string]string{"team": "a"}))
				w.namespaces = append(w.namespaces, namespace("mesh", nil))
				w.gateways, w.services, w.pods = append(w.gateways, gw), append(w.services, s), append(w.pods, p)
				labelled(w.services[1], LabelUseWaypoint, "wp", LabelUseWaypointNamespace, "mesh")
			}),
			want:       map[string]*workloadapi.GatewayAddress{echoSvc: gwAddr("mesh", "wp")},
			wantStatus: map[string]PolicyCondition{"app/echo": bound("mesh/wp")},
		},
		{
			name: "cross-namespace use denied by a selector that does not match",
			in: newWorld(map[string]string{"team": "b"}, func(w *world) {
				gw, s, p := readyWaypoint("mesh", "wp", "10.96.0.200", "10.0.0.200", allowedFrom(gatewayv1.NamespacesFromSelector, map[string]string{"team": "a"}))
				w.namespaces = append(w.namespaces, namespace("mesh", nil))
				w.gateways, w.services, w.pods = append(w.gateways, gw), append(w.services, s), append(w.pods, p)
				labelled(w.services[1], LabelUseWaypoint, "wp", LabelUseWaypointNamespace, "mesh")
			}),
			wantStatus: map[string]PolicyCondition{"app/echo": notBound(ReasonAttachmentDenied,
				`we are not permitted to attach to waypoint "mesh/wp" (missing allowedRoutes?)`)},
		},
		{
			name: "for-service-account binds that account's pods and Services only",
			in: newWorld(ambient, func(w *world) {
				w.gateways[0] = waypointGateway("app", "wp", gwAnnotation(AnnotationForServiceAccount, "echo"))
				w.services = append(w.services,
					service("app", "other", map[string]string{"app": "other"}, []string{"10.96.0.2"}, port(80, intstr.FromInt32(8080))),
					service("app", "mixed", map[string]string{"tier": "web"}, []string{"10.96.0.3"}, port(80, intstr.FromInt32(8080))),
					service("app", "empty", map[string]string{"app": "nothing"}, []string{"10.96.0.4"}, port(80, intstr.FromInt32(8080))))
				w.pods[1].Labels["tier"] = "web"
				w.pods = append(w.pods, with(pod("app", "other-0", map[string]string{"app": "other", "tier": "web"}, "10.0.0.2"), serviceAccountName("other")))
			}),
			want:       map[string]*workloadapi.GatewayAddress{echoSvc: gwAddr("app", "wp"), echoPod: gwAddr("app", "wp")},
			wantStatus: map[string]PolicyCondition{"app/echo": bound("app/wp")},
		},
		{
			name: "for-service-account as a label",
			in: newWorld(ambient, func(w *world) {
				w.gateways[0] = waypointGateway("app", "wp", gwLabel(AnnotationForServiceAccount, "echo"))
			}),
			want:       map[string]*workloadapi.GatewayAddress{echoSvc: gwAddr("app", "wp"), echoPod: gwAddr("app", "wp")},
			wantStatus: map[string]PolicyCondition{"app/echo": bound("app/wp")},
		},
		{
			name: "for-service-account with waypoint-for service on the Gateway",
			in: newWorld(ambient, func(w *world) {
				w.gateways[0] = waypointGateway("app", "wp", gwAnnotation(AnnotationForServiceAccount, "echo"), gwLabel(LabelWaypointFor, WaypointForService))
			}),
			want:       map[string]*workloadapi.GatewayAddress{echoSvc: gwAddr("app", "wp")},
			wantStatus: map[string]PolicyCondition{"app/echo": bound("app/wp")},
		},
		{
			name: "for-service-account with waypoint-for workload: pods only, no complaint for Services",
			in: newWorld(ambient, func(w *world) {
				w.gateways[0] = waypointGateway("app", "wp", gwAnnotation(AnnotationForServiceAccount, "echo"), gwLabel(LabelWaypointFor, WaypointForWorkload))
			}),
			want: map[string]*workloadapi.GatewayAddress{echoPod: gwAddr("app", "wp")},
		},
		{
			name: "use-waypoint none on the objects beats for-service-account",
			in: newWorld(ambient, func(w *world) {
				w.gateways[0] = waypointGateway("app", "wp", gwAnnotation(AnnotationForServiceAccount, "echo"))
				labelled(w.services[1], LabelUseWaypoint, "none")
				with(w.pods[1], podLabel(LabelUseWaypoint, "none"))
			}),
		},
		{
			name: "use-waypoint none on the namespace beats for-service-account",
			in: newWorld(map[string]string{LabelUseWaypoint: "none"}, func(w *world) {
				w.gateways[0] = waypointGateway("app", "wp", gwAnnotation(AnnotationForServiceAccount, "echo"))
			}),
		},
		{
			name: "the namespace's waypoint beats for-service-account",
			in: newWorld(map[string]string{LabelUseWaypoint: "wp2"}, func(w *world) {
				w.gateways[0] = waypointGateway("app", "wp", gwAnnotation(AnnotationForServiceAccount, "echo"))
				gw, s, p := readyWaypoint("app", "wp2", "10.96.0.102", "10.0.0.102", gwLabel(LabelWaypointFor, WaypointForAll))
				w.gateways, w.services, w.pods = append(w.gateways, gw), append(w.services, s), append(w.pods, p)
			}),
			want:       map[string]*workloadapi.GatewayAddress{echoSvc: gwAddr("app", "wp2"), echoPod: gwAddr("app", "wp2")},
			wantStatus: map[string]PolicyCondition{"app/echo": bound("app/wp2")},
		},
		{
			name: "for-service-account waypoint not ready yet",
			in: newWorld(ambient, func(w *world) {
				w.gateways[0] = waypointGateway("app", "wp", gwAnnotation(AnnotationForServiceAccount, "echo"))
				w.pods = w.pods[1:]
			}),
			wantStatus: map[string]PolicyCondition{"app/echo": wpNotReady("app/wp")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := Build(tt.in, Options{})
			want := tt.want
			if want == nil {
				want = map[string]*workloadapi.GatewayAddress{}
			}
			if diff := cmp.Diff(want, waypointsOf(out), protocmp.Transform()); diff != "" {
				t.Errorf("Build(in) waypoints (-want +got):\n%s", diff)
			}
			wantStatus := tt.wantStatus
			if wantStatus == nil {
				wantStatus = map[string]PolicyCondition{}
			}
			if diff := cmp.Diff(wantStatus, boundStatuses(out)); diff != "" {
				t.Errorf("Build(in) WaypointBound conditions (-want +got):\n%s", diff)
			}
			// The waypoint's own pod, when there is one, is served and
			// never captured.
			if w := out.Addresses[wpPod].GetWorkload(); w != nil && w.TunnelProtocol != workloadapi.TunnelProtocol_NONE {
				t.Errorf("Build(in) waypoint pod = %v, want a workload with tunnel protocol NONE", w)
			}
		})
	}
}

// TestWaypointProtos checks the whole Service and Workload resources of a
// namespace using an "all" waypoint.
func TestWaypointProtos(t *testing.T) {
	in := newWorld(map[string]string{LabelDataplaneMode: DataplaneModeAmbient, LabelUseWaypoint: "wp"}, func(w *world) {
		w.gateways[0] = waypointGateway("app", "wp", gwLabel(LabelWaypointFor, WaypointForAll))
	})
	wpWorkload := workload("app", "wp-0", "10.0.0.100")
	wpWorkload.ServiceAccount = "wp"
	wpWorkload.Services = map[string]*workloadapi.PortList{wpSvc: ports(15021, 15021, 15008, 15008)}
	echo := workload("app", "echo-0", "10.0.0.1")
	echo.ServiceAccount = "echo"
	echo.CanonicalName = "echo"
	echo.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
	echo.Services = map[string]*workloadapi.PortList{echoSvc: ports(80, 8080)}
	echo.Waypoint = gwAddr("app", "wp")
	want := addresses(
		wl(wpWorkload, nil),
		wl(echo, nil),
		svcAddr(&workloadapi.Service{
			Name: "wp", Namespace: "app", Hostname: "wp.app.svc.cluster.local",
			Addresses:  []*workloadapi.NetworkAddress{{Address: ip("10.96.0.100")}},
			Ports:      []*workloadapi.Port{{ServicePort: 15021, TargetPort: 15021}, {ServicePort: 15008, TargetPort: 15008}},
			IpFamilies: workloadapi.IPFamilies_IPV4_ONLY,
		}),
		svcAddr(&workloadapi.Service{
			Name: "echo", Namespace: "app", Hostname: "echo.app.svc.cluster.local",
			Addresses:  []*workloadapi.NetworkAddress{{Address: ip("10.96.0.1")}},
			Ports:      []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}},
			IpFamilies: workloadapi.IPFamilies_IPV4_ONLY,
			Waypoint:   gwAddr("app", "wp"),
		}),
	)
	got := Build(in, Options{})
	if diff := cmp.Diff(want, got.Addresses, protocmp.Transform()); diff != "" {
		t.Errorf("Build(in).Addresses (-want +got):\n%s", diff)
	}
}

func condition(typ string, ok bool, reason, msg string) metav1.Condition {
	s := metav1.ConditionTrue
	if !ok {
		s = metav1.ConditionFalse
	}
	return metav1.Condition{Type: typ, Status: s, ObservedGeneration: 3, Reason: reason, Message: msg}
}

func listenerOK(name string) gatewayv1.ListenerStatus {
	return gatewayv1.ListenerStatus{Name: gatewayv1.SectionName(name), SupportedKinds: []gatewayv1.RouteGroupKind{}, Conditions: []metav1.Condition{
		condition("Accepted", true, "Accepted", "No errors found"),
		condition("Conflicted", false, "NoConflicts", "No errors found"),
		condition("Programmed", true, "Programmed", "No errors found"),
		condition("ResolvedRefs", true, "ResolvedRefs", "No errors found"),
	}}
}

func listenerBad(name string) gatewayv1.ListenerStatus {
	const msg = `Expected a single listener on port 15008 with protocol "HBONE"`
	return gatewayv1.ListenerStatus{Name: gatewayv1.SectionName(name), SupportedKinds: []gatewayv1.RouteGroupKind{}, Conditions: []metav1.Condition{
		condition("Accepted", false, "UnsupportedProtocol", msg),
		condition("Conflicted", false, "NoConflicts", "No errors found"),
		condition("Programmed", false, "Invalid", msg),
		condition("ResolvedRefs", true, "ResolvedRefs", "No errors found"),
	}}
}

// TestGatewayStatus checks the status of a waypoint Gateway in each state.
func TestGatewayStatus(t *testing.T) {
	ipType, hostType := gatewayv1.IPAddressType, gatewayv1.HostnameAddressType
	addrs := []gatewayv1.GatewayStatusAddress{{Type: &ipType, Value: "10.96.0.100"}, {Type: &hostType, Value: "wp.app.svc.cluster.local"}}
	accepted := condition("Accepted", true, "Accepted", "Resource accepted")
	const host = `"wp.app.svc.cluster.local"`
	tests := []struct {
		name string
		in   *Inputs
		want *GatewayStatus
	}{
		{
			name: "ready",
			in:   newWorld(nil, nil),
			want: &GatewayStatus{Namespace: "app", Name: "wp", Generation: 3, Addresses: addrs, Listeners: []gatewayv1.ListenerStatus{listenerOK("mesh")},
				Conditions: []metav1.Condition{accepted, condition("Programmed", true, "Programmed", "Resource programmed, assigned to service(s) wp.app.svc.cluster.local:15008")}},
		},
		{
			name: "no Service",
			in:   newWorld(nil, func(w *world) { w.services = w.services[1:] }),
			want: &GatewayStatus{Namespace: "app", Name: "wp", Generation: 3, Listeners: []gatewayv1.ListenerStatus{listenerOK("mesh")},
				Conditions: []metav1.Condition{accepted, condition("Programmed", false, "AddressNotUsable", "Failed to assign to any requested addresses: hostname "+host+" not found")}},
		},
		{
			name: "headless Service",
			in: newWorld(nil, func(w *world) {
				w.services[0].Spec.ClusterIP, w.services[0].Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
			}),
			want: &GatewayStatus{Namespace: "app", Name: "wp", Generation: 3, Listeners: []gatewayv1.ListenerStatus{listenerOK("mesh")},
				Conditions: []metav1.Condition{accepted, condition("Programmed", false, "AddressNotAssigned", "Failed to assign to any requested addresses: service app/wp has no cluster IP")}},
		},
		{
			name: "pod not ready",
			in:   newWorld(nil, func(w *world) { with(w.pods[0], notReady()) }),
			want: &GatewayStatus{Namespace: "app", Name: "wp", Generation: 3, Listeners: []gatewayv1.ListenerStatus{listenerOK("mesh")},
				Conditions: []metav1.Condition{accepted, condition("Programmed", false, "AddressNotAssigned", "Failed to assign to any requested addresses: no instances found for hostname "+host)}},
		},
		{
			name: "pod being deleted",
			in:   newWorld(nil, func(w *world) { with(w.pods[0], deleting()) }),
			want: &GatewayStatus{Namespace: "app", Name: "wp", Generation: 3, Listeners: []gatewayv1.ListenerStatus{listenerOK("mesh")},
				Conditions: []metav1.Condition{accepted, condition("Programmed", false, "AddressNotAssigned", "Failed to assign to any requested addresses: no instances found for hostname "+host)}},
		},
		{
			name: "wrong protocol",
			in:   newWorld(nil, func(w *world) { w.gateways[0].Spec.Listeners[0].Protocol = "HTTP" }),
			want: &GatewayStatus{Namespace: "app", Name: "wp", Generation: 3, Listeners: []gatewayv1.ListenerStatus{listenerBad("mesh")},
				Conditions: []metav1.Condition{
					condition("Accepted", false, "ListenersNotValid", `None of the Gateway's listeners are valid. Expected a single listener on port 15008 with protocol "HBONE"`),
					condition("Programmed", false, "Invalid", "The Gateway is not accepted"),
				}},
		},
		{
			name: "wrong port",
			in:   newWorld(nil, func(w *world) { w.gateways[0].Spec.Listeners[0].Port = 15009 }),
			want: &GatewayStatus{Namespace: "app", Name: "wp", Generation: 3, Listeners: []gatewayv1.ListenerStatus{listenerBad("mesh")},
				Conditions: []metav1.Condition{
					condition("Accepted", false, "ListenersNotValid", `None of the Gateway's listeners are valid. Expected a single listener on port 15008 with protocol "HBONE"`),
					condition("Programmed", false, "Invalid", "The Gateway is not accepted"),
				}},
		},
		{
			name: "a second listener",
			in: newWorld(nil, func(w *world) {
				w.gateways[0].Spec.Listeners = append(w.gateways[0].Spec.Listeners, gatewayv1.Listener{Name: "http", Port: 80, Protocol: "HTTP"})
			}),
			want: &GatewayStatus{Namespace: "app", Name: "wp", Generation: 3, Listeners: []gatewayv1.ListenerStatus{listenerOK("mesh"), listenerBad("http")},
				Conditions: []metav1.Condition{
					condition("Accepted", false, "ListenersNotValid", `The Gateway has 2 listeners. Expected a single listener on port 15008 with protocol "HBONE"`),
					condition("Programmed", false, "Invalid", "The Gateway is not accepted"),
				}},
		},
		{
			name: "no listener",
			in:   newWorld(nil, func(w *world) { w.gateways[0].Spec.Listeners = nil }),
			want: &GatewayStatus{Namespace: "app", Name: "wp", Generation: 3,
				Conditions: []metav1.Condition{
					condition("Accepted", false, "ListenersNotValid", `The Gateway has no listeners. Expected a single listener on port 15008 with protocol "HBONE"`),
					condition("Programmed", false, "Invalid", "The Gateway is not accepted"),
				}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := Build(tt.in, Options{})
			want := map[string]*GatewayStatus{"app/wp": tt.want}
			if diff := cmp.Diff(want, out.GatewayStatuses); diff != "" {
				t.Errorf("Build(in).GatewayStatuses (-want +got):\n%s", diff)
			}
		})
	}
}

// TestGatewayStatusRejected checks that only configuration errors (Accepted
// False) are reported as rejected, not a waypoint that is not ready yet.
func TestGatewayStatusRejected(t *testing.T) {
	const msg = `Expected a single listener on port 15008 with protocol "HBONE"`
	tests := []struct {
		name string
		in   *Inputs
		want []string
	}{
		{name: "ready", in: newWorld(nil, nil)},
		{name: "not ready", in: newWorld(nil, func(w *world) { w.pods = w.pods[1:] })},
		{name: "second listener", in: newWorld(nil, func(w *world) {
			w.gateways[0].Spec.Listeners = append(w.gateways[0].Spec.Listeners, gatewayv1.Listener{Name: "http", Port: 80, Protocol: "HTTP"})
		}), want: []string{
			"Accepted=False: ListenersNotValid: The Gateway has 2 listeners. " + msg,
			"listener http: Accepted=False: UnsupportedProtocol: " + msg,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Build(tt.in, Options{}).GatewayStatuses["app/wp"].Rejected()
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("GatewayStatus.Rejected() (-want +got):\n%s", diff)
			}
		})
	}
}

func requireDeny(ns, name string, scope security.Scope, principals ...string) *security.Authorization {
	return requirePolicy(ns, name, scope, principals)
}

// TestRequireWaypoint checks the policies of require-waypoint and the
// workloads naming them.
func TestRequireWaypoint(t *testing.T) {
	useWP := map[string]string{LabelDataplaneMode: DataplaneModeAmbient, LabelUseWaypoint: "wp"}
	svcPolicy := requireDeny("app", "ambientgo_require_waypoint_service_echo", security.Scope_WORKLOAD_SELECTOR, "cluster.local/ns/app/sa/wp")
	tests := []struct {
		name         string
		in           *Inputs
		want         []*security.Authorization
		wantPolicies map[string][]string // workload → authorization_policies
		wantStatus   map[string]PolicyCondition
	}{
		{
			name: "service label: a policy for its pods",
			in: newWorld(useWP, func(w *world) {
				labelled(w.services[1], LabelRequireWaypoint, "true")
			}),
			want:         []*security.Authorization{svcPolicy},
			wantPolicies: map[string][]string{echoPod: {"app/ambientgo_require_waypoint_service_echo"}},
			wantStatus:   map[string]PolicyCondition{"app/echo": bound("app/wp")},
		},
		{
			name: "service label false: nothing",
			in: newWorld(useWP, func(w *world) {
				labelled(w.services[1], LabelRequireWaypoint, "false")
			}),
			wantStatus: map[string]PolicyCondition{"app/echo": bound("app/wp")},
		},
		{
			name: "the waypoint's pods' accounts are allowed too",
			in: newWorld(useWP, func(w *world) {
				labelled(w.services[1], LabelRequireWaypoint, "true")
				w.pods[0].Spec.ServiceAccountName = "custom"
			}),
			want: []*security.Authorization{requireDeny("app", "ambientgo_require_waypoint_service_echo", security.Scope_WORKLOAD_SELECTOR,
				"cluster.local/ns/app/sa/custom", "cluster.local/ns/app/sa/wp")},
			wantPolicies: map[string][]string{echoPod: {"app/ambientgo_require_waypoint_service_echo"}},
			wantStatus:   map[string]PolicyCondition{"app/echo": bound("app/wp")},
		},
		{
			name: "namespace label: a namespace policy",
			in: newWorld(map[string]string{LabelUseWaypoint: "wp", LabelRequireWaypoint: "true"}, func(w *world) {
				gw, s, p := readyWaypoint("app", "wp2", "10.96.0.102", "10.0.0.102", gwLabel(LabelWaypointFor, WaypointForWorkload))
				w.gateways, w.services, w.pods = append(w.gateways, gw), append(w.services, s), append(w.pods, p)
				w.pods = append(w.pods, pod("app", "pinned-0", map[string]string{LabelUseWaypoint: "wp2"}, "10.0.0.3"))
			}),
			want: []*security.Authorization{requireDeny("app", "ambientgo_require_waypoint_namespace", security.Scope_NAMESPACE,
				"cluster.local/ns/app/sa/wp", "cluster.local/ns/app/sa/wp2")},
			wantStatus: map[string]PolicyCondition{"app/echo": bound("app/wp")},
		},
		{
			name: "no waypoint asked: no policy, status says so",
			in: newWorld(nil, func(w *world) {
				labelled(w.services[1], LabelRequireWaypoint, "true")
			}),
			wantStatus: map[string]PolicyCondition{"app/echo": notBound(ReasonWaypointRequired, requireUnmetMessage)},
		},
		{
			name: "waypoint not ready: no policy, status says so",
			in: newWorld(map[string]string{LabelUseWaypoint: "wp", LabelRequireWaypoint: "true"}, func(w *world) {
				with(w.pods[0], notReady())
			}),
			wantStatus: map[string]PolicyCondition{"app/echo": notBound(ReasonWaypointIsNotReady, `waypoint "app/wp" is not ready; `+requireUnmetMessage)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := Build(tt.in, Options{})
			var got []*security.Authorization
			for _, k := range slices.Sorted(maps.Keys(out.Authorizations)) {
				got = append(got, out.Authorizations[k])
			}
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Build(in).Authorizations (-want +got):\n%s", diff)
			}
			gotPolicies := map[string][]string{}
			for k, a := range out.Addresses {
				if p := a.GetWorkload().GetAuthorizationPolicies(); len(p) > 0 {
					gotPolicies[k] = p
				}
			}
			want := tt.wantPolicies
			if want == nil {
				want = map[string][]string{}
			}
			if diff := cmp.Diff(want, gotPolicies); diff != "" {
				t.Errorf("Build(in) authorization_policies (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantStatus, boundStatuses(out)); diff != "" {
				t.Errorf("Build(in) WaypointBound conditions (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBuilderWaypoints checks that a Builder follows changes of only a
// waypoint Gateway, its Service, its pod's readiness or a namespace's
// labels: the Service and Workload of the (unchanged) echo objects must
// follow.
func TestBuilderWaypoints(t *testing.T) {
	gw, wsvc, wpod := readyWaypoint("app", "wp", "10.96.0.100", "10.0.0.100", gwLabel(LabelWaypointFor, WaypointForAll))
	echoS := labelled(service("app", "echo", map[string]string{"app": "echo"}, []string{"10.96.0.1"}, port(80, intstr.FromInt32(8080))), LabelRequireWaypoint, "true")
	echoP := pod("app", "echo-0", map[string]string{"app": "echo"}, "10.0.0.1")
	ns := namespace("app", map[string]string{LabelUseWaypoint: "wp"})
	base := Inputs{
		Namespaces: []*corev1.Namespace{ns},
		Gateways:   []*gatewayv1.Gateway{gw},
		Services:   []*corev1.Service{wsvc, echoS},
		Pods:       []*corev1.Pod{wpod, echoP},
	}
	edit := func(f func(in *Inputs)) *Inputs {
		in := base
		in.Namespaces, in.Gateways, in.Services, in.Pods = slices.Clone(in.Namespaces), slices.Clone(in.Gateways), slices.Clone(in.Services), slices.Clone(in.Pods)
		f(&in)
		return &in
	}
	unready := with(waypointPod("app", "wp", "10.0.0.100"), notReady())
	steps := []struct {
		name  string
		in    *Inputs
		bound bool // echo's Service and Workload have the waypoint
	}{
		{name: "pod not ready", in: edit(func(in *Inputs) { in.Pods[0] = unready }), bound: false},
		{name: "pod ready", in: &base, bound: true},
		{name: "same again", in: edit(func(*Inputs) {}), bound: true},
		{name: "wrong listener", in: edit(func(in *Inputs) {
			in.Gateways[0] = waypointGateway("app", "wp", gwLabel(LabelWaypointFor, WaypointForAll), func(g *gatewayv1.Gateway) { g.Spec.Listeners[0].Port = 1 })
		}), bound: false},
		{name: "fixed", in: &base, bound: true},
		{name: "Service deleted", in: edit(func(in *Inputs) { in.Services = in.Services[1:] }), bound: false},
		{name: "Service back", in: &base, bound: true},
		{name: "namespace unlabelled", in: edit(func(in *Inputs) { in.Namespaces[0] = namespace("app", nil) }), bound: false},
		{name: "namespace labelled", in: &base, bound: true},
		{name: "Gateway deleted", in: edit(func(in *Inputs) { in.Gateways = nil }), bound: false},
		{name: "class makes it a workload waypoint", in: edit(func(in *Inputs) {
			in.Gateways[0] = waypointGateway("app", "wp")
			in.GatewayClasses = []*gatewayv1.GatewayClass{{ObjectMeta: metav1.ObjectMeta{Name: WaypointGatewayClass, Labels: map[string]string{LabelWaypointFor: WaypointForAll}}}}
		}), bound: true},
	}
	b := NewBuilder(Options{})
	for _, step := range steps {
		got := b.Build(step.in)
		want := Build(step.in, Options{})
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Errorf("%s: Builder.Build differs from Build (-want +got):\n%s", step.name, diff)
		}
		var wantWP *workloadapi.GatewayAddress
		var wantPolicies []string
		if step.bound {
			wantWP, wantPolicies = gwAddr("app", "wp"), []string{"app/ambientgo_require_waypoint_service_echo"}
		}
		if diff := cmp.Diff(wantWP, got.Addresses[echoSvc].GetService().GetWaypoint(), protocmp.Transform()); diff != "" {
			t.Errorf("%s: Builder.Build Service waypoint (-want +got):\n%s", step.name, diff)
		}
		w := got.Addresses[echoPod].GetWorkload()
		if diff := cmp.Diff(wantWP, w.GetWaypoint(), protocmp.Transform()); diff != "" {
			t.Errorf("%s: Builder.Build Workload waypoint (-want +got):\n%s", step.name, diff)
		}
		if diff := cmp.Diff(wantPolicies, w.GetAuthorizationPolicies()); diff != "" {
			t.Errorf("%s: Builder.Build Workload authorization_policies (-want +got):\n%s", step.name, diff)
		}
	}
}
