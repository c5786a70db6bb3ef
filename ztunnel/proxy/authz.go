package proxy

import (
	"errors"
	"io"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"

	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
)

// Errors of authorization, in access log records.
var (
	// ErrDenied is a connection a DENY policy matched, or that no ALLOW
	// policy matched while some apply.
	ErrDenied = errors.New("denied by policy")
	// ErrPolicyChange ends an established connection that the policies
	// deny since they changed.
	ErrPolicyChange = errors.New("connection closed due to policy change")
)

// authorizer enforces L4 policies at the destination: it keeps the store's
// policies compiled (recompiled when they change, never per connection)
// and the established inbound connections, which it re-checks after every
// store update.
type authorizer struct {
	store *state.Store
	log   *slog.Logger

	mu       sync.Mutex // serializes compiling and re-checks
	compiled atomic.Pointer[compiledPolicies]
	conns    map[*inboundConn]struct{} // under connsMu
	connsMu  sync.Mutex
}

type compiledPolicies struct {
	version  uint64 // store version they were read at
	src      map[string]*security.Authorization
	policies *authz.Policies
}

func (a *authorizer) init(store *state.Store, log *slog.Logger) {
	a.store, a.log = store, log
	a.conns = map[*inboundConn]struct{}{}
	store.OnChange(a.recheck)
}

// current returns the compiled policies of the store's current version.
func (a *authorizer) current() *authz.Policies {
	v := a.store.Version()
	if c := a.compiled.Load(); c != nil && c.version == v {
		return c.policies
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refresh().policies
}

// refresh recompiles when the store's policies changed; called with mu.
func (a *authorizer) refresh() *compiledPolicies {
	v := a.store.Version()
	old := a.compiled.Load()
	if old != nil && old.version == v {
		return old
	}
	src := a.store.Policies()
	c := &compiledPolicies{version: v, src: src}
	if old != nil && maps.Equal(old.src, src) {
		c.policies = old.policies // only addresses changed
	} else {
		list := make([]*security.Authorization, 0, len(src))
		for _, p := range src {
			list = append(list, p)
		}
		c.policies = authz.Compile(list)
	}
	a.compiled.Store(c)
	return c
}

// evaluate decides c against policies, for its destination workload.
func (a *authorizer) evaluate(policies *authz.Policies, c *authz.Conn) authz.Decision {
	t := authz.Target{}
	if w := a.store.WorkloadByAddr(c.Dst.Addr()); w != nil {
		t.Namespace, t.Policies = w.Namespace, w.AuthorizationPolicies
	}
	d := policies.Evaluate(t, c)
	if d.DryRun && (d.Shadow.Allow != d.Allow || d.Shadow.Policy != "") {
		a.log.Info("dry-run policy", "src", c.Src.String(), "dst", c.Dst.String(), "src.identity", c.Identity,
			"would_allow", d.Shadow.Allow, "policy", d.Shadow.Policy, "reason", d.Shadow.Reason.String(), "allowed", d.Allow)
	}
	return d
}

// Authorize decides, with Istio's semantics, whether the connection c to
// a workload of this node is allowed: c.Dst is the workload's address and
// target port, c.Identity the peer's SPIFFE ID (empty for plaintext, which
// a STRICT PeerAuthentication denies). The inbound paths call it before
// dialing the application; a denied HBONE CONNECT gets 401, a denied
// plaintext connection is reset. Dry-run policies are logged only.
func (p *Proxy) Authorize(c authz.Conn) authz.Decision {
	return p.authz.evaluate(p.authz.current(), &c)
}

// inboundConn is an established inbound connection, re-checked when
// policies or workloads change.
type inboundConn struct {
	conn    authz.Conn
	closers []io.Closer
	denied  atomic.Pointer[authz.Verdict]
}

// watchInbound registers an established connection; closers are closed if
// a later policy denies it. It is checked once more on registration, so a
// change between Authorize and watchInbound is not missed.
func (p *Proxy) watchInbound(c authz.Conn, closers ...io.Closer) *inboundConn {
	ic := &inboundConn{conn: c, closers: closers}
	a := &p.authz
	a.connsMu.Lock()
	a.conns[ic] = struct{}{}
	a.connsMu.Unlock()
	a.check(a.current(), ic)
	return ic
}

func (p *Proxy) unwatchInbound(ic *inboundConn) {
	p.authz.connsMu.Lock()
	delete(p.authz.conns, ic)
	p.authz.connsMu.Unlock()
}

// closedBy returns the verdict of the policy change that closed ic, or
// nil.
func (ic *inboundConn) closedBy() *authz.Verdict { return ic.denied.Load() }

// check closes ic if policies deny it now.
func (a *authorizer) check(policies *authz.Policies, ic *inboundConn) {
	if ic.denied.Load() != nil {
		return
	}
	d := a.evaluate(policies, &ic.conn)
	if d.Allow {
		return
	}
	if !ic.denied.CompareAndSwap(nil, &d.Verdict) {
		return
	}
	a.log.Info("closing connection denied by new policy", "src", ic.conn.Src.String(), "dst", ic.conn.Dst.String(),
		"src.identity", ic.conn.Identity, "policy", d.Policy, "reason", d.Reason.String())
	for _, c := range ic.closers {
		c.Close()
	}
}

// recheck runs after every store update: it recompiles the policies if
// they changed and closes the established connections they now deny.
func (a *authorizer) recheck() {
	a.mu.Lock()
	c := a.refresh()
	a.mu.Unlock()
	a.connsMu.Lock()
	conns := make([]*inboundConn, 0, len(a.conns))
	for ic := range a.conns {
		conns = append(conns, ic)
	}
	a.connsMu.Unlock()
	for _, ic := range conns {
		a.check(c.policies, ic)
	}
}

// policyError is the access log error of a denied connection.
func policyError(d authz.Decision) error {
	if d.Reason == authz.NoAllowMatched {
		return errors.New("denied by policy: no allow policy matched")
	}
	return ErrDenied
}
