package deployer

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func TestServicePorts(t *testing.T) {
	port := func(name string, n int32, app string) corev1.ServicePort {
		return corev1.ServicePort{Name: name, Port: n, TargetPort: intstr.FromInt32(n), Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To(app)}
	}
	status := port("status-port", 15021, "tcp")
	tests := []struct {
		name      string
		listeners []gatewayv1.Listener
		want      []corev1.ServicePort
	}{
		{
			name:      "waypoint",
			listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
			want:      []corev1.ServicePort{status, port("mesh", 15008, "hbone")},
		},
		{
			name:      "wrong listener is deployed as Istio does",
			listeners: []gatewayv1.Listener{{Name: "http", Port: 8080, Protocol: gatewayv1.HTTPProtocolType}},
			want:      []corev1.ServicePort{status, port("http", 8080, "http")},
		},
		{
			name: "one port per distinct listener port, the status port first",
			listeners: []gatewayv1.Listener{
				{Name: "mesh", Port: 15008, Protocol: "HBONE"},
				{Name: "again", Port: 15008, Protocol: "HBONE"},
				{Name: "status", Port: 15021, Protocol: gatewayv1.HTTPProtocolType},
			},
			want: []corev1.ServicePort{status, port("mesh", 15008, "hbone")},
		},
		{name: "no listener", want: []corev1.ServicePort{status}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gw := &gatewayv1.Gateway{Spec: gatewayv1.GatewaySpec{GatewayClassName: ClassName, Listeners: tt.listeners}}
			var got []corev1.ServicePort
			for _, p := range servicePorts(gw) {
				got = append(got, corev1.ServicePort{Name: *p.Name, Port: *p.Port, TargetPort: *p.TargetPort, Protocol: *p.Protocol, AppProtocol: p.AppProtocol})
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("servicePorts (-want +got):\n%s", diff)
			}
		})
	}
}

func TestManaged(t *testing.T) {
	ip, host := gatewayv1.IPAddressType, gatewayv1.HostnameAddressType
	tests := []struct {
		name  string
		addrs []gatewayv1.GatewaySpecAddress
		want  bool
	}{
		{name: "no address", want: true},
		{name: "one IP", addrs: []gatewayv1.GatewaySpecAddress{{Type: &ip, Value: "10.0.0.1"}}, want: true},
		{name: "one untyped", addrs: []gatewayv1.GatewaySpecAddress{{Value: "10.0.0.1"}}, want: true},
		{name: "a hostname names an existing deployment", addrs: []gatewayv1.GatewaySpecAddress{{Type: &host, Value: "wp.demo.svc"}}},
		{name: "two addresses", addrs: []gatewayv1.GatewaySpecAddress{{Type: &ip, Value: "10.0.0.1"}, {Type: &ip, Value: "10.0.0.2"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gw := &gatewayv1.Gateway{Spec: gatewayv1.GatewaySpec{Addresses: tt.addrs}}
			if got := managed(gw); got != tt.want {
				t.Errorf("managed(%+v) = %v, want %v", tt.addrs, got, tt.want)
			}
		})
	}
}

// TestRenderInfrastructure: the Gateway's spec.infrastructure labels and
// annotations reach every object and the pods, and never replace ours.
func TestRenderInfrastructure(t *testing.T) {
	gw := &gatewayv1.Gateway{Spec: gatewayv1.GatewaySpec{
		GatewayClassName: ClassName,
		Infrastructure: &gatewayv1.GatewayInfrastructure{
			Labels:      map[gatewayv1.LabelKey]gatewayv1.LabelValue{"team": "a", DataplaneModeLabel: "ambient"},
			Annotations: map[gatewayv1.AnnotationKey]gatewayv1.AnnotationValue{"owner": "b"},
		},
	}}
	gw.Name, gw.Namespace, gw.UID = "wp", "demo", "u1"
	cfg := Config{Image: "img", XDSAddress: "xds:15012"}
	objs := render(gw, &cfg)
	pod := objs.deployment.Spec.Template
	for what, got := range map[string]map[string]string{
		"service account": objs.serviceAccount.Labels, "deployment": objs.deployment.Labels,
		"service": objs.service.Labels, "pod": pod.Labels,
	} {
		if got["team"] != "a" || got[GatewayNameLabel] != "wp" || got[ManagedLabel] != ManagedValue {
			t.Errorf("%s labels = %v, want team=a, %s=wp and %s=%s", what, got, GatewayNameLabel, ManagedLabel, ManagedValue)
		}
	}
	if got := pod.Labels[DataplaneModeLabel]; got != "none" {
		t.Errorf("pod label %s = %q, want none (the waypoint is never captured, whatever the Gateway asks)", DataplaneModeLabel, got)
	}
	if got := pod.Annotations["owner"]; got != "b" {
		t.Errorf("pod annotation owner = %q, want b", got)
	}
	if got := *pod.Spec.Containers[0].Image; got != "img" {
		t.Errorf("image = %q, want img", got)
	}
}
