package kubectl

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/logstream"
	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
	"github.com/ambient-go/mesh/tests/kube"
)

// TestMeshctlLogsRBAC: with kubectl's credentials, a user allowed `get
// pods/log` only in namespace a sees a's records and gets
// PermissionDenied for b, against a real API server (TokenReview and
// SubjectAccessReview by istiod-lite's relay).
func TestMeshctlLogsRBAC(t *testing.T) {
	if testing.Short() {
		t.Skip("builds meshctl")
	}
	log := testLogger(t)
	c := kube.Start(t, kube.Config{Log: log.With("component", "harness")})
	apply(t, c, `apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: ztunnel, namespace: istio-system}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: alice, namespace: a}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-logs, namespace: a}
rules:
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-pod-logs, namespace: a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-logs}
subjects:
- {kind: ServiceAccount, name: alice, namespace: a}
`)
	ist, _ := startIstiod(t, c, log)
	zt := runPod(t, c, "node-a", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-a", Namespace: "istio-system"},
		Spec: corev1.PodSpec{ServiceAccountName: "ztunnel"}}, "198.18.1.2")

	// node-a's log service, authenticated as its ztunnel (a token bound to
	// the ztunnel pod, as on its xDS stream), with records of a and b.
	ring := logstream.NewRing(64)
	for i, ns := range []string{"a", "b", "a", "b"} {
		ring.Add(&accesslog.Record{
			Direction: accesslog.Inbound, SrcNamespace: ns, DstNamespace: ns, DstWorkload: "echo",
			SrcAddr: netip.AddrPortFrom(netip.MustParseAddr("198.18.1.10"), uint16(40000+i)),
		}, time.Millisecond)
	}
	ztToken := strings.TrimSpace(c.MustKubectl(t, "create", "token", "ztunnel", "-n", "istio-system",
		"--bound-object-kind", "Pod", "--bound-object-name", zt.Name, "--audience", "istio-ca"))
	conn, err := grpc.NewClient(ist.PlaintextAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	agent, err := logstream.NewAgent(logstream.AgentConfig{
		Conn:    conn,
		Token:   func(context.Context) (string, error) { return ztToken, nil },
		Service: logstream.NewService(logstream.Config{Ring: ring, Kind: logsv1.ProxyKind_ZTUNNEL, Name: "node-a"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); agent.Start(ctx) }()
	defer func() { cancel(); <-done }()
	eventually(t, waitTimeout, "node-a joins the relay", func() error {
		if len(ist.Relay().Proxies()) != 1 {
			return fmt.Errorf("relay proxies: %v", ist.Relay().Proxies())
		}
		return nil
	})

	// alice's kubeconfig: a bearer token of her ServiceAccount, as
	// `kubectl create token` gives (the API server's own audience).
	aliceToken := strings.TrimSpace(c.MustKubectl(t, "create", "token", "alice", "-n", "a"))
	kubeconfig := filepath.Join(t.TempDir(), "alice.kubeconfig")
	if err := os.WriteFile(kubeconfig, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: alice
  user: {token: %q}
contexts:
- name: alice
  context: {cluster: test, user: alice, namespace: a}
current-context: alice
`, c.REST.Host, aliceToken), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "meshctl")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ambient-go/mesh/meshctl/cmd/meshctl").CombinedOutput(); err != nil {
		t.Fatalf("go build meshctl: %v\n%s", err, out)
	}
	meshctl := func(args ...string) (string, string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", kubeconfig, "--istiod", ist.PlaintextAddr().String(), "logs", "-o", "json"}, args...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		return out.String(), errOut.String(), err
	}

	for _, tc := range []struct {
		name   string
		args   []string
		wantNS []string // namespaces of the records printed
		denied bool
	}{
		{name: "-n a", args: []string{"-n", "a"}, wantNS: []string{"a", "a"}},
		{name: "the context's namespace (a)", args: nil, wantNS: []string{"a", "a"}},
		{name: "-A: every namespace alice may read", args: []string{"-A"}, wantNS: []string{"a", "a"}},
		{name: "-n b", args: []string{"-n", "b"}, denied: true},
		{name: "--from-namespace b", args: []string{"-A", "--from-namespace", "b"}, denied: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := meshctl(tc.args...)
			if tc.denied {
				if err == nil || !strings.Contains(errOut, "PermissionDenied") {
					t.Errorf("meshctl logs %q = %v, stderr %q, want PermissionDenied", tc.args, err, errOut)
				}
				if out != "" {
					t.Errorf("meshctl logs %q printed %q, want nothing", tc.args, out)
				}
				return
			}
			if err != nil {
				t.Fatalf("meshctl logs %q: %v\n%s", tc.args, err, errOut)
			}
			var got []string
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if line == "" {
					continue
				}
				switch {
				case strings.Contains(line, `"namespace":"a"`):
					got = append(got, "a")
				case strings.Contains(line, `"namespace":"b"`):
					got = append(got, "b")
				default:
					got = append(got, line)
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.wantNS, " ") {
				t.Errorf("meshctl logs %q printed records of %q, want %q\n%s", tc.args, got, tc.wantNS, out)
			}
		})
	}

	// A token that is not a Kubernetes token is Unauthenticated.
	bad := filepath.Join(t.TempDir(), "bad.kubeconfig")
	b, _ := os.ReadFile(kubeconfig)
	os.WriteFile(bad, bytes.Replace(b, []byte(aliceToken), []byte("not-a-token"), 1), 0o600)
	cmd := exec.Command(bin, "--kubeconfig", bad, "--istiod", ist.PlaintextAddr().String(), "logs", "-n", "a")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "Unauthenticated") {
		t.Errorf("meshctl logs with a bad token = %v, %q, want Unauthenticated", err, out)
	}
}
