package ca

import "testing"

func TestServiceAccountOf(t *testing.T) {
	tests := []struct {
		user     string
		ns, name string
		ok       bool
	}{
		{user: "system:serviceaccount:istio-system:ztunnel", ns: "istio-system", name: "ztunnel", ok: true},
		{user: "system:serviceaccount:demo:default", ns: "demo", name: "default", ok: true},
		{user: "system:serviceaccount:demo"},
		{user: "system:serviceaccount::x"},
		{user: "system:serviceaccount:a:b:c"},
		{user: "system:node:node-a"},
		{user: "admin"},
	}
	for _, tt := range tests {
		ns, name, ok := ServiceAccountOf(tt.user)
		if ns != tt.ns || name != tt.name || ok != tt.ok {
			t.Errorf("ServiceAccountOf(%q) = %q, %q, %v, want %q, %q, %v", tt.user, ns, name, ok, tt.ns, tt.name, tt.ok)
		}
	}
}
