package model

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambient-go/mesh/pkg/workloadapi"
)

func TestAppProtocol(t *testing.T) {
	str := func(s string) *string { return &s }
	tests := []struct {
		name string
		port corev1.ServicePort
		want workloadapi.AppProtocol
	}{
		{"no name", corev1.ServicePort{Port: 8080}, workloadapi.AppProtocol_UNKNOWN},
		{"name http", corev1.ServicePort{Name: "http", Port: 80}, workloadapi.AppProtocol_HTTP11},
		{"name prefix http-", corev1.ServicePort{Name: "http-web", Port: 80}, workloadapi.AppProtocol_HTTP11},
		{"name case-insensitive", corev1.ServicePort{Name: "GRPC-api", Port: 80}, workloadapi.AppProtocol_GRPC},
		{"name http2", corev1.ServicePort{Name: "http2", Port: 80}, workloadapi.AppProtocol_HTTP2},
		{"name httpx is not http", corev1.ServicePort{Name: "httpx", Port: 80}, workloadapi.AppProtocol_UNKNOWN},
		{"name https is TLS", corev1.ServicePort{Name: "https", Port: 443}, workloadapi.AppProtocol_TLS},
		{"name tcp", corev1.ServicePort{Name: "tcp-db", Port: 5432}, workloadapi.AppProtocol_TCP},
		{"grpc-web has no value", corev1.ServicePort{Name: "grpc-web", Port: 80}, workloadapi.AppProtocol_UNKNOWN},
		{"redis has no value", corev1.ServicePort{Name: "redis", Port: 6379}, workloadapi.AppProtocol_UNKNOWN},
		{"appProtocol beats name", corev1.ServicePort{Name: "tcp", AppProtocol: str("http"), Port: 80}, workloadapi.AppProtocol_HTTP11},
		{"appProtocol grpc", corev1.ServicePort{AppProtocol: str("grpc"), Port: 80}, workloadapi.AppProtocol_GRPC},
		{"kubernetes.io/h2c", corev1.ServicePort{AppProtocol: str("kubernetes.io/h2c"), Port: 80}, workloadapi.AppProtocol_HTTP2},
		{"kubernetes.io/ws", corev1.ServicePort{AppProtocol: str("kubernetes.io/ws"), Port: 80}, workloadapi.AppProtocol_HTTP11},
		{"kubernetes.io/wss", corev1.ServicePort{AppProtocol: str("kubernetes.io/wss"), Port: 443}, workloadapi.AppProtocol_TLS},
		{"well-known port unnamed", corev1.ServicePort{Port: 3306}, workloadapi.AppProtocol_TCP},
		{"well-known port unknown name", corev1.ServicePort{Name: "db", Port: 27017}, workloadapi.AppProtocol_TCP},
		{"well-known port named mysql", corev1.ServicePort{Name: "mysql", Port: 3306}, workloadapi.AppProtocol_UNKNOWN},
		{"well-known port named http", corev1.ServicePort{Name: "http", Port: 25}, workloadapi.AppProtocol_HTTP11},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := appProtocol(tc.port); got != tc.want {
				t.Errorf("appProtocol(%+v) = %v, want %v", tc.port, got, tc.want)
			}
		})
	}
}
