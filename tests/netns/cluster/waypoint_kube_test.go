package cluster

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambient-go/mesh/tests/kube"
)

func TestExpandVars(t *testing.T) {
	vars := map[string]string{"POD_NAME": "waypoint-0", "POD_NAMESPACE": "demo", "EMPTY": ""}
	tests := []struct {
		name, in, want string
	}{
		{name: "none", in: "--gateway=waypoint", want: "--gateway=waypoint"},
		{name: "one", in: "--pod-name=$(POD_NAME)", want: "--pod-name=waypoint-0"},
		{name: "two", in: "$(POD_NAME).$(POD_NAMESPACE)", want: "waypoint-0.demo"},
		{name: "empty value", in: "x$(EMPTY)y", want: "xy"},
		{name: "unknown stays", in: "--ip=$(INSTANCE_IP)", want: "--ip=$(INSTANCE_IP)"},
		{name: "escaped", in: "$$(POD_NAME)", want: "$(POD_NAME)"},
		{name: "lone dollar", in: "a$b$", want: "a$b$"},
		{name: "unterminated", in: "$(POD_NAME", want: "$(POD_NAME"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := kube.ExpandVars(tt.in, vars); got != tt.want {
				t.Errorf("expandVars(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestRewriteMounts(t *testing.T) {
	mounts := map[string]string{
		"/var/run/secrets/tokens": "/tmp/v/istio-token",
		"/var/run/secrets/istio":  "/tmp/v/istiod-ca-cert",
		"/var/run/secrets":        "/tmp/v/all",
	}
	tests := []struct {
		name, in, want string
	}{
		{name: "file in a mount", in: "--token-file=/var/run/secrets/tokens/istio-token", want: "--token-file=/tmp/v/istio-token/istio-token"},
		{name: "longest mount wins", in: "--ca-root=/var/run/secrets/istio/root-cert.pem", want: "--ca-root=/tmp/v/istiod-ca-cert/root-cert.pem"},
		{name: "the mount itself", in: "--dir=/var/run/secrets/tokens", want: "--dir=/tmp/v/istio-token"},
		{name: "a sibling of a mount is in the parent mount", in: "--x=/var/run/secrets/tokensmore", want: "--x=/tmp/v/all/tokensmore"},
		{name: "a path only sharing a prefix", in: "--x=/var/run/secretsmore/a", want: "--x=/var/run/secretsmore/a"},
		{name: "no path", in: "--gateway=waypoint", want: "--gateway=waypoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rewriteMounts(tt.in, mounts); got != tt.want {
				t.Errorf("rewriteMounts(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestProbeURL(t *testing.T) {
	ip := netip.MustParseAddr("198.19.3.11")
	get := func(port intstr.IntOrString) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready", Port: port}}}
	}
	tests := []struct {
		name    string
		ctr     corev1.Container
		want    string
		wantErr bool
	}{
		{name: "readiness", ctr: corev1.Container{ReadinessProbe: get(intstr.FromInt32(15021))}, want: "http://198.19.3.11:15021/healthz/ready"},
		{name: "start-up first", ctr: corev1.Container{StartupProbe: get(intstr.FromInt32(15021)), ReadinessProbe: get(intstr.FromInt32(1))},
			want: "http://198.19.3.11:15021/healthz/ready"},
		{name: "named port", ctr: corev1.Container{ReadinessProbe: get(intstr.FromString("status-port")),
			Ports: []corev1.ContainerPort{{Name: "status-port", ContainerPort: 15021}}}, want: "http://198.19.3.11:15021/healthz/ready"},
		{name: "unknown named port", ctr: corev1.Container{ReadinessProbe: get(intstr.FromString("status-port"))}, wantErr: true},
		{name: "no probe", ctr: corev1.Container{}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := probeURL(tt.ctr, ip)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("probeURL() = %q, %v; want %q (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}
