package podrun

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambient-go/mesh/tests/kube"
)

func TestCommand(t *testing.T) {
	vars := map[string]string{"A": "a"}
	for _, tc := range []struct {
		name            string
		ctr             corev1.Container
		entrypoint, cmd []string
		want            []string
		wantErr         bool
	}{
		{name: "image entrypoint and cmd", entrypoint: []string{"/e"}, cmd: []string{"c"}, want: []string{"/e", "c"}},
		{name: "args replace cmd", ctr: corev1.Container{Args: []string{"x", "$(A)"}}, entrypoint: []string{"/e"}, cmd: []string{"c"}, want: []string{"/e", "x", "a"}},
		{name: "command drops entrypoint and cmd", ctr: corev1.Container{Command: []string{"/b"}}, entrypoint: []string{"/e"}, cmd: []string{"c"}, want: []string{"/b"}},
		{name: "command and args", ctr: corev1.Container{Command: []string{"/b", "$(A)"}, Args: []string{"y"}}, entrypoint: []string{"/e"}, want: []string{"/b", "a", "y"}},
		{name: "cmd only", cmd: []string{"/c", "z"}, want: []string{"/c", "z"}},
		{name: "nothing to run", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := command(tc.ctr, tc.entrypoint, tc.cmd, vars)
			if (err != nil) != tc.wantErr {
				t.Fatalf("command() error = %v, want error %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("command() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestExpandVars(t *testing.T) {
	vars := map[string]string{"A": "x", "B": "y"}
	for _, tc := range []struct{ in, want string }{
		{"$(A)", "x"},
		{"$(A)-$(B)", "x-y"},
		{"$$(A)", "$(A)"},
		{"$(C)", "$(C)"},
		{"$(A", "$(A"},
		{"a$b", "a$b"},
		{"end$", "end$"},
	} {
		if got := kube.ExpandVars(tc.in, vars); got != tc.want {
			t.Errorf("expandVars(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// fakeObjects serves ConfigMaps and Secrets from maps.
type fakeObjects struct {
	cms     map[string]map[string]string
	secrets map[string]map[string][]byte
}

func (f fakeObjects) configMap(_ context.Context, ns, name string) (map[string]string, error) {
	if d, ok := f.cms[ns+"/"+name]; ok {
		return d, nil
	}
	return nil, fmt.Errorf("ConfigMap %s/%s: %w", ns, name, errNotFound)
}

func (f fakeObjects) secret(_ context.Context, ns, name string) (map[string][]byte, error) {
	if d, ok := f.secrets[ns+"/"+name]; ok {
		return d, nil
	}
	return nil, fmt.Errorf("Secret %s/%s: %w", ns, name, errNotFound)
}

func TestContainerEnv(t *testing.T) {
	yes := true
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u1", Labels: map[string]string{"app": "a"}},
		Spec:       corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "sa"},
	}
	objs := fakeObjects{
		cms:     map[string]map[string]string{"ns/cm": {"k": "v", "other": "o"}},
		secrets: map[string]map[string][]byte{"ns/s": {"pw": []byte("secret")}},
	}
	fields := fieldValues(pod, "198.19.1.11", "198.18.0.11")
	for _, tc := range []struct {
		name    string
		env     []corev1.EnvVar
		from    []corev1.EnvFromSource
		want    []string
		wantErr bool
	}{
		{
			name: "image, base, then the container's, in place",
			env:  []corev1.EnvVar{{Name: "PATH", Value: "/x"}, {Name: "N", Value: "$(HOSTNAME)-1"}},
			want: []string{"PATH=/x", "HOSTNAME=p", "N=p-1"},
		},
		{
			name: "downward API",
			env: []corev1.EnvVar{
				{Name: "NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
				{Name: "NS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
				{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
				{Name: "IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
				{Name: "SA", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.serviceAccountName"}}},
				{Name: "APP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
			},
			want: []string{"PATH=/bin", "HOSTNAME=p", "NAME=p", "NS=ns", "NODE=node-1", "IP=198.19.1.11", "SA=sa", "APP=a"},
		},
		{
			name: "ConfigMap and Secret keys, optional ones absent",
			env: []corev1.EnvVar{
				{Name: "C", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "k"}}},
				{Name: "S", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "pw"}}},
				{Name: "O", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "gone"}, Key: "k", Optional: &yes}}},
				{Name: "OK", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "nokey", Optional: &yes}}},
			},
			want: []string{"PATH=/bin", "HOSTNAME=p", "C=v", "S=secret"},
		},
		{
			name: "envFrom with a prefix",
			from: []corev1.EnvFromSource{{Prefix: "X_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}}}},
			want: []string{"PATH=/bin", "HOSTNAME=p", "X_k=v", "X_other=o"},
		},
		{
			name:    "a missing ConfigMap is an error",
			env:     []corev1.EnvVar{{Name: "C", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "gone"}, Key: "k"}}}},
			wantErr: true,
		},
		{
			name:    "a missing key is an error",
			env:     []corev1.EnvVar{{Name: "C", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "nokey"}}}},
			wantErr: true,
		},
		{
			name:    "an unsupported field is an error",
			env:     []corev1.EnvVar{{Name: "F", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.hostname"}}}},
			wantErr: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctr := corev1.Container{Env: tc.env, EnvFrom: tc.from}
			got, _, err := containerEnv(t.Context(), pod, ctr, []string{"PATH=/bin"}, map[string]string{"HOSTNAME": "p"}, fields, objs)
			if (err != nil) != tc.wantErr {
				t.Fatalf("containerEnv() error = %v, want error %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("containerEnv() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestServiceAddrs(t *testing.T) {
	no := false
	svc := func(ns, name, ip string) corev1.Service {
		return corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{ClusterIP: ip}}
	}
	slice := func(ns, svc string, ready []string, unready []string) discoveryv1.EndpointSlice {
		s := discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}}}
		for _, a := range ready {
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
		}
		for _, a := range unready {
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &no}})
		}
		return s
	}
	got := serviceAddrs(
		[]corev1.Service{svc("istio-system", "istiod", "198.18.128.10"), svc("demo", "empty", "198.18.128.11"), svc("demo", "headless", "None")},
		[]discoveryv1.EndpointSlice{slice("istio-system", "istiod", []string{"198.19.2.11"}, []string{"198.19.1.11"})},
	)
	want := []serviceHosts{
		{Namespace: "demo", Name: "empty", Addrs: []string{"198.18.128.11"}},
		{Namespace: "istio-system", Name: "istiod", Addrs: []string{"198.19.2.11", "198.19.1.11"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("serviceAddrs() (-want +got):\n%s", diff)
	}
	hosts := hostsFile("istio-system", "ztunnel-x", "198.19.1.12", got)
	wantHosts := `# Kubernetes-managed hosts file (tests/kube/podrun: Services stand in for cluster DNS).
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
198.19.1.12	ztunnel-x
127.0.0.1	kubernetes.default.svc.cluster.local kubernetes.default.svc kubernetes.default
198.18.128.11	empty.demo.svc.cluster.local empty.demo.svc empty.demo
198.19.2.11	istiod.istio-system.svc.cluster.local istiod.istio-system.svc istiod.istio-system istiod
198.19.1.11	istiod.istio-system.svc.cluster.local istiod.istio-system.svc istiod.istio-system istiod
`
	if diff := cmp.Diff(wantHosts, hosts); diff != "" {
		t.Errorf("hostsFile() (-want +got):\n%s", diff)
	}
}

func TestProject(t *testing.T) {
	data := map[string]string{"a": "1", "b": "2"}
	for _, tc := range []struct {
		name     string
		items    []corev1.KeyToPath
		optional bool
		want     map[string]string
		wantErr  bool
	}{
		{name: "all keys", want: map[string]string{"a": "1", "b": "2"}},
		{name: "items to paths", items: []corev1.KeyToPath{{Key: "a", Path: "dir/x"}}, want: map[string]string{"dir/x": "1"}},
		{name: "missing key", items: []corev1.KeyToPath{{Key: "c", Path: "c"}}, wantErr: true},
		{name: "missing optional key", items: []corev1.KeyToPath{{Key: "c", Path: "c"}}, optional: true, want: map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := project(data, tc.items, tc.optional)
			if (err != nil) != tc.wantErr {
				t.Fatalf("project() error = %v, want error %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("project() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestProbePort(t *testing.T) {
	ctr := corev1.Container{Ports: []corev1.ContainerPort{{Name: "http-ready", ContainerPort: 15021}}}
	for _, tc := range []struct {
		port    intstr.IntOrString
		want    uint16
		wantErr bool
	}{
		{port: intstr.FromInt32(15012), want: 15012},
		{port: intstr.FromString("http-ready"), want: 15021},
		{port: intstr.FromString("8080"), want: 8080},
		{port: intstr.FromString("nope"), wantErr: true},
		{port: intstr.FromInt32(0), wantErr: true},
	} {
		got, err := probePort(ctr, tc.port)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("probePort(%v) = %d, %v; want %d, error %v", tc.port.String(), got, err, tc.want, tc.wantErr)
		}
	}
}
