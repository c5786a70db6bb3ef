package relay

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambient-go/mesh/pkg/logstream"
	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// fuzzAPI is a fake API server whose TokenReview authenticates any token
// as one user and whose SubjectAccessReview of pods/log allows the
// namespaces in allowed ("" is cluster-wide).
type fuzzAPI struct {
	mu      sync.Mutex
	allowed map[string]bool
}

func newFuzzAPI() (*fuzzAPI, *fake.Clientset) {
	a := &fuzzAPI{}
	c := fake.NewClientset()
	c.PrependReactor("create", "tokenreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authnv1.TokenReview{Status: authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "alice"}}}, nil
	})
	c.PrependReactor("create", "subjectaccessreviews", func(act k8stesting.Action) (bool, runtime.Object, error) {
		sar := act.(k8stesting.CreateAction).GetObject().(*authzv1.SubjectAccessReview)
		a.mu.Lock()
		ok := a.allowed[sar.Spec.ResourceAttributes.Namespace]
		a.mu.Unlock()
		return true, &authzv1.SubjectAccessReview{Status: authzv1.SubjectAccessReviewStatus{Allowed: ok}}, nil
	})
	return a, c
}

// FuzzWatchAccess: any WatchRequest bytes from a caller who may read some
// namespaces (allowed: comma-separated, "*" cluster-wide), and any
// Delivery bytes from a proxy answering it. The request goes through the
// real KubeAuthorizer (on a fake API server), restrict and
// logstream.Compile, as Watch does; the delivery's responses through
// watch.deliver, as Deliver does.
//
// Properties: no panic; Authorize grants exactly what the API server
// allows for the namespaces the request names (Namespaces), or every
// readable namespace when it names none; restrict does not change the
// caller's request; a record the restricted request matches (what a
// well-behaved proxy sends) is one the caller may see, and so is every
// record deliver passes on, whatever the proxy sent, with the proxy's
// name and kind; a loss count passed on is the proxy's own, and a proxy
// cannot speak for the relay (proxy status).
func FuzzWatchAccess(f *testing.F) {
	api, client := newFuzzAPI()
	var tok int
	f.Fuzz(func(t *testing.T, reqBytes []byte, allowed string, delivery []byte) {
		req := &logsv1.WatchRequest{}
		if proto.Unmarshal(reqBytes, req) != nil {
			return // gRPC refuses it before Watch
		}
		var d logsv1.Delivery
		if proto.Unmarshal(delivery, &d) != nil {
			return
		}
		readable := map[string]bool{}
		var nsList []string
		for _, ns := range strings.Split(allowed, ",") {
			if ns == "*" {
				readable[""] = true
				continue
			}
			readable[ns] = true
			nsList = append(nsList, ns)
		}
		api.mu.Lock()
		api.allowed = readable
		api.mu.Unlock()
		tok++                 // a fresh token: no cached review of another input
		client.ClearActions() // the fake keeps every request otherwise
		az := &KubeAuthorizer{Client: client, Namespaces: func() []string { return nsList }}
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer t"+itoa(tok)))

		asked := logstream.Namespaces(req)
		if !slices.IsSorted(asked) || len(slices.Compact(slices.Clone(asked))) != len(asked) {
			t.Fatalf("Namespaces(%v) = %q, want sorted and unique", req, asked)
		}
		access, err := az.Authorize(ctx, asked)
		mayRead := func(ns string) bool { return readable[""] || readable[ns] }
		if asked != nil {
			denied := slices.ContainsFunc(asked, func(ns string) bool { return !readable[ns] })
			switch {
			case denied && status.Code(err) != codes.PermissionDenied:
				t.Fatalf("Authorize(%q) with readable %q = %v, %v; want PermissionDenied", asked, allowed, access, err)
			case !denied && (err != nil || access.All || !slices.Equal(access.Namespaces, asked)):
				t.Fatalf("Authorize(%q) with readable %q = %+v, %v; want exactly those namespaces", asked, allowed, access, err)
			}
		} else {
			switch {
			case readable[""]:
				if err != nil || !access.All {
					t.Fatalf("Authorize(nil) cluster-wide = %+v, %v; want All", access, err)
				}
			case err != nil:
				if status.Code(err) != codes.PermissionDenied || slices.ContainsFunc(nsList, func(ns string) bool { return readable[ns] }) {
					t.Fatalf("Authorize(nil) with readable %q = %v", allowed, err)
				}
			default:
				for _, ns := range access.Namespaces {
					if !readable[ns] {
						t.Fatalf("Authorize(nil) with readable %q granted %q", allowed, ns)
					}
				}
			}
		}
		if err != nil {
			return
		}

		before := proto.Clone(req)
		rreq, err := restrict(req, access)
		if !proto.Equal(before, req) {
			t.Fatalf("restrict changed the caller's request:\n%v\nto\n%v", before, req)
		}
		if err != nil {
			if status.Code(err) != codes.PermissionDenied || asked != nil {
				t.Fatalf("restrict(%v) = %v, want PermissionDenied and only for a request that names no namespaces as a whole", req, err)
			}
			return
		}
		m, err := logstream.Compile(rreq)
		if err != nil {
			return // InvalidArgument
		}
		visible := func(r *logsv1.Record) bool {
			return mayRead(r.GetSource().GetNamespace()) || mayRead(r.GetDestination().GetNamespace())
		}

		w := &watch{
			ctx: ctx, req: rreq, access: access, start: time.Now(),
			in: make(chan item, len(d.GetResponses())+1), done: make(chan struct{}), lastSeen: map[string]time.Time{},
		}
		p := &proxyConn{name: "node-a", kind: logsv1.ProxyKind_ZTUNNEL}
		l := &leg{proxy: p, w: w}
		for _, resp := range d.GetResponses() {
			if rec := resp.GetRecord(); rec != nil && m.Match(rec) && !access.allows(rec) {
				t.Fatalf("the restricted request %v matches record %v outside the caller's namespaces %q", rreq, rec, access.Namespaces)
			}
			if !w.deliver(ctx, l, proto.Clone(resp).(*logsv1.WatchResponse)) {
				t.Fatal("deliver() = false with the watch running")
			}
		}
		close(w.in)
		for it := range w.in {
			switch ev := it.resp.GetEvent().(type) {
			case *logsv1.WatchResponse_Record:
				if !visible(ev.Record) {
					t.Fatalf("the caller (readable %q) received record %v", allowed, ev.Record)
				}
				if ev.Record.GetProxy() != p.name || ev.Record.GetProxyKind() != p.kind {
					t.Fatalf("record passed on as from %v %q, want the sending proxy's %v %q", ev.Record.GetProxyKind(), ev.Record.GetProxy(), p.kind, p.name)
				}
			case *logsv1.WatchResponse_Lost:
				if ev.Lost.GetProxy() != p.name || ev.Lost.GetSource() != logsv1.Lost_PROXY {
					t.Fatalf("loss passed on as %v, want the sending proxy's (%q, PROXY)", ev.Lost, p.name)
				}
			case *logsv1.WatchResponse_ProxyStatus:
				t.Fatalf("a proxy spoke for the relay: %v", ev.ProxyStatus)
			case nil:
			default:
				t.Fatalf("unknown event %T passed on", ev)
			}
		}
	})
}

// FuzzProxyHello: any first message on a proxy's Connect stream from any
// authenticated caller. mayClaim lets a node agent speak only for its own
// ztunnel (or its node's waypoints, local mode) and a workload only for a
// waypoint of its own namespace, its identity being
// spiffe://<td>/ns/<ns>/sa/<sa>.
func FuzzProxyHello(f *testing.F) {
	f.Fuzz(func(t *testing.T, hello []byte, node, identity string) {
		var m logsv1.ProxyMessage
		if proto.Unmarshal(hello, &m) != nil {
			return
		}
		h := m.GetHello()
		err := mayClaim(ProxyCaller{Node: node, Identity: identity}, h)
		if err != nil {
			return
		}
		switch h.GetKind() {
		case logsv1.ProxyKind_ZTUNNEL:
			if node == "" || h.GetName() != node {
				t.Fatalf("node %q may speak for ztunnel %q", node, h.GetName())
			}
		case logsv1.ProxyKind_WAYPOINT:
			ns, _, ok := strings.Cut(h.GetName(), "/")
			if !ok || ns == "" {
				t.Fatalf("waypoint name %q without a namespace accepted", h.GetName())
			}
			if node != "" {
				return
			}
			id, err := spiffeid.FromString(identity)
			if err != nil {
				t.Fatalf("caller with identity %q (not a SPIFFE ID) may speak for waypoint %q", identity, h.GetName())
			}
			seg := strings.Split(id.Path(), "/")
			if len(seg) != 5 || seg[1] != "ns" || seg[2] != ns || seg[3] != "sa" || seg[4] == "" {
				t.Fatalf("identity %q may speak for waypoint %q of namespace %q", identity, h.GetName(), ns)
			}
		default:
			t.Fatalf("unknown kind %v accepted", h.GetKind())
		}
	})
}
