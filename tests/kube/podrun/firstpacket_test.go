package podrun_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/netns"
)

// firstReqSource is the program of the image ambient-go/firstreq:test: the
// first thing it does is GET $TARGET, printing "FIRST <status> <body>" or
// "FIRST error <error>"; then it waits to be stopped.
const firstReqSource = `package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(os.Getenv("TARGET"))
	if err != nil {
		fmt.Println("FIRST error", err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		fmt.Println("FIRST", resp.StatusCode, string(b))
	}
	select {}
}
`

// fpObjects: the ambient namespace fp with the echo app's pod on node-2,
// and a pod of fp out of the mesh on node-1 (a plain-text client).
const fpObjects = `
apiVersion: v1
kind: Namespace
metadata: {name: fp, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: fp}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: fp}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: fp, labels: {app: server}}
spec:
  nodeName: node-2
  serviceAccountName: server
  containers:
  - name: app
    image: ambient-go/echo:test
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: fp, labels: {istio.io/dataplane-mode: none}}
spec:
  nodeName: node-1
  serviceAccountName: default # no ServiceAccount admission plugin defaults it
  containers: [{name: app, image: ambient-go/echo:test}]
`

// fpStrict makes fp refuse plain text.
const fpStrict = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: fp}
spec: {mtls: {mode: STRICT}}
`

// fpClients is a Deployment of fpReplicas pods on node-1 whose container
// requests the server (%s: its address) as its first action.
const fpClients = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: fp}
spec:
  replicas: %d
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-1}
      serviceAccountName: client
      # No token to request before the container starts: it starts as
      # soon as the pod has its IP, racing the mesh's configuration.
      automountServiceAccountToken: false
      containers:
      - name: app
        image: ambient-go/firstreq:test
        env: [{name: TARGET, value: "http://%s/first"}]
`

const (
	fpReplicas = 6
	fpClientID = "spiffe://cluster.local/ns/fp/sa/client"
)

// TestFirstPacketCaptured: a new pod of an ambient namespace is captured
// from its first packet (issue 14). The harness creates each pod's
// sandbox, running the CNI ADD through deploy/'s plugin chain, before it
// publishes the pod's IP, as a kubelet does. The server's namespace is
// STRICT, so a request that left a client pod in plain text is refused;
// each client pod's very first request must be answered, and the server's
// ztunnel must have logged it with the client's identity.
func TestFirstPacketCaptured(t *testing.T) {
	netns.RequireRoot(t)
	d := startDeployed(t, buildEchoImage(t), buildGoImage(t, "firstreq", firstReqSource))
	d.rollout(t)
	kc := d.kc
	ctx := t.Context()

	if _, err := kc.KubectlStdin(ctx, strings.NewReader(fpObjects), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	kc.MustKubectl(t, "wait", "-n", "fp", "--for=condition=Ready", "pod/server", "pod/stranger", "--timeout=60s")
	server := netip.AddrPortFrom(d.podNS(t, "fp", "server").IP, 8080)
	zpods, err := kc.Clientset.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
	if err != nil {
		t.Fatal(err)
	}
	serverZtunnel := ""
	for _, p := range zpods.Items {
		if p.Spec.NodeName == "node-2" {
			serverZtunnel = p.Name
		}
	}
	if serverZtunnel == "" {
		t.Fatal("no ztunnel pod on node-2")
	}

	// A plain request from the pod out of the mesh reaches the server,
	// and is refused once STRICT is in force.
	stranger := d.podNS(t, "fp", "stranger")
	plainGet := func() (int, error) {
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return stranger.Dial(ctx, network, addr)
			},
			DisableKeepAlives: true,
		}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Second}).Get("http://" + server.String() + "/plain")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	wpEventually(t, wpWait, "a plain request from outside the mesh answered before STRICT", func() error {
		if code, err := plainGet(); err != nil || code != http.StatusOK {
			return fmt.Errorf("GET from outside the mesh = %d, %v, want 200", code, err)
		}
		return nil
	})
	if _, err := kc.KubectlStdin(ctx, strings.NewReader(fpStrict), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	wpEventually(t, wpWait, "a plain request from outside the mesh refused (STRICT)", func() error {
		if code, err := plainGet(); err == nil {
			return fmt.Errorf("GET from outside the mesh = %d, want it refused", code)
		}
		return nil
	})

	from := d.out.mark()
	if _, err := kc.KubectlStdin(ctx, strings.NewReader(fmt.Sprintf(fpClients, fpReplicas, server)), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	first := map[string]string{} // client pod -> its first request's outcome
	for len(first) < fpReplicas {
		l, ok := d.out.wait(from, 2*time.Minute, func(l outputLine) bool {
			_, seen := first[l.pod.Name]
			return l.pod.Namespace == "fp" && l.ctr == "app" && strings.HasPrefix(l.line, "FIRST ") && !seen
		})
		if !ok {
			t.Fatalf("%d of %d client pods reported their first request within 2m: %v", len(first), fpReplicas, first)
		}
		first[l.pod.Name] = l.line
	}
	for name, line := range first {
		p := d.podNS(t, "fp", name)
		if want := "FIRST 200 ok " + p.IP.String() + ":"; !strings.HasPrefix(line, want) {
			t.Errorf("pod %s (%s): first request: %q, want %q... (answered, from the pod's address)", name, p.IP, line, want)
			continue
		}
		rec, ok := d.out.waitJSON(from, 10*time.Second, "istio-system", serverZtunnel, "ztunnel", func(m map[string]any) bool {
			return wpStr(m, "msg") == accesslog.Message && wpStr(m, accesslog.KeyDirection) == accesslog.Inbound &&
				strings.HasPrefix(wpStr(m, accesslog.KeySrcAddr), p.IP.String()+":")
		})
		if !ok {
			t.Errorf("pod %s (%s): the server's ztunnel logged no inbound connection from it", name, p.IP)
			continue
		}
		if id := wpStr(rec, accesslog.KeySrcIdentity); id != fpClientID {
			t.Errorf("pod %s: the server's ztunnel logged src.identity %q for its first request, want %q", name, id, fpClientID)
		}
	}
}
