package proxy

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// maxMirrors bounds the mirrored requests in flight; a mirror beyond it is
// dropped (a mirror never delays or fails the request it copies).
const maxMirrors = 64

// mirrorTimeout bounds one mirrored request.
const mirrorTimeout = 10 * time.Second

// mirrors sends the copies of RequestMirror filters: fire and forget, on
// goroutines of their own bounded by maxMirrors, whose answers are read
// and dropped. Close cancels those in flight and waits for them.
type mirrors struct {
	p      *Proxy
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}
	wg     sync.WaitGroup
}

func newMirrors(p *Proxy) *mirrors {
	ctx, cancel := context.WithCancel(context.Background()) // the proxy's lifetime: a mirror outlives its request
	return &mirrors{p: p, ctx: ctx, cancel: cancel, sem: make(chan struct{}, maxMirrors)}
}

// send mirrors r (with body, already read) to m's backend, with m's
// probability. It returns at once.
func (ms *mirrors) send(r *http.Request, body []byte, m *mirror, port uint16) {
	if m.perMillion < 1_000_000 && rand.Uint32N(1_000_000) >= m.perMillion {
		return
	}
	select {
	case ms.sem <- struct{}{}:
	default:
		ms.p.log.Debug("mirror dropped: too many in flight", "backend", m.backend.key)
		return
	}
	svc := ms.p.cfg.Store.ServiceByHostname(m.backend.hostname)
	if svc == nil || svc.Key != m.backend.key {
		<-ms.sem
		return
	}
	bport := m.backend.servicePort(port)
	w, tport, l, err := ms.p.lb.pick(svc, bport) // balance.go
	if err != nil {
		<-ms.sem
		return
	}
	// The copy is made now: r changes (filters) and ends with its handler.
	ctx, cancel := context.WithTimeout(ms.ctx, mirrorTimeout)
	out := r.Clone(ctx)
	out.RequestURI = ""
	out.Body = nil
	if len(body) > 0 {
		out.Body = io.NopCloser(bytes.NewReader(body))
	}
	out.ContentLength = int64(len(body))
	rq := &request{h2: r.ProtoMajor == 2 || servicePortProtocol(svc, bport) == protoHTTP2}
	rq.upstream = netip.AddrPortFrom(w.Addrs[0], tport)
	rq.hbone = ms.p.up.tunnelled(w)
	out.URL.Scheme, out.URL.Host = "http", rq.upstream.String()
	for _, h := range hopByHop {
		delete(out.Header, h)
	}
	out = out.WithContext(context.WithValue(ctx, requestKey{}, rq))
	ms.wg.Go(func() {
		defer func() { <-ms.sem }()
		defer cancel()
		res, err := ms.p.up.roundTripOnce(out, rq)
		ms.p.lb.done(l, tryOutcome(ctx, err))
		if err != nil {
			ms.p.log.Debug("mirror failed", "backend", m.backend.key, "error", err)
			return
		}
		io.Copy(io.Discard, io.LimitReader(res.Body, 1<<20))
		res.Body.Close()
	})
}

// close cancels the mirrors in flight and waits for them.
func (ms *mirrors) close() {
	ms.cancel()
	ms.wg.Wait()
}
