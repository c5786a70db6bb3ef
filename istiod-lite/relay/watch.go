package relay

import (
	"container/heap"
	"context"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ambient-go/mesh/pkg/logstream"
	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// leg is one query sent to one proxy for one watch.
type leg struct {
	id    uint64
	proxy *proxyConn
	w     *watch

	startOnce, finishOnce sync.Once
	startedCh             chan struct{}
}

func (l *leg) started() { l.startOnce.Do(func() { close(l.startedCh) }) }

// finish ends the leg once: the relay forgets it, the proxy is told to stop
// (if still connected) and the watch counts it done.
func (l *leg) finish() {
	l.finishOnce.Do(func() {
		r := l.w.r
		r.mu.Lock()
		delete(r.legs, l.id)
		r.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		l.proxy.send(ctx, &logsv1.RelayCommand{Command: &logsv1.RelayCommand_Cancel{Cancel: l.id}})
		cancel()
		select {
		case l.w.in <- item{legDone: l}:
		case <-l.w.done:
		}
	})
}

// item is what reaches a watch's merge loop.
type item struct {
	resp    *logsv1.WatchResponse
	legDone *leg
}

// watch is one caller's Watch.
type watch struct {
	r      *Relay
	ctx    context.Context
	req    *logsv1.WatchRequest // as sent to proxies (namespaces restricted)
	access *Access
	start  time.Time
	in     chan item
	done   chan struct{}

	mu       sync.Mutex
	lastSeen map[string]time.Time // newest record time per proxy
}

// Watch implements LogStream for callers such as `meshctl logs`.
func (r *Relay) Watch(req *logsv1.WatchRequest, stream grpc.ServerStreamingServer[logsv1.WatchResponse]) error {
	ctx := stream.Context()
	access, err := r.cfg.Authorizer.Authorize(ctx, logstream.Namespaces(req))
	if err != nil {
		return err
	}
	req, err = restrict(req, access)
	if err != nil {
		return err
	}
	if _, err := logstream.Compile(req); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	w := &watch{
		r: r, ctx: ctx, req: req, access: access, start: time.Now(),
		in: make(chan item, 1024), done: make(chan struct{}), lastSeen: map[string]time.Time{},
	}

	r.mu.Lock()
	var ps []*proxyConn
	for _, p := range r.proxies {
		ps = append(ps, p)
	}
	if req.GetFollow() {
		r.watches[w] = struct{}{}
	}
	r.mu.Unlock()
	defer func() {
		close(w.done)
		r.mu.Lock()
		delete(r.watches, w)
		var mine []*leg
		for _, l := range r.legs {
			if l.w == w {
				mine = append(mine, l)
			}
		}
		r.mu.Unlock()
		for _, l := range mine {
			l.finish()
		}
	}()
	open := 0
	for _, p := range ps {
		if w.wants(p) {
			w.startLeg(p, req)
			open++
		}
	}
	r.log.Debug("log watch started", "user", access.User, "proxies", open, "follow", req.GetFollow())
	if !req.GetFollow() && open == 0 {
		return nil
	}
	return w.merge(stream, open)
}

// wants says whether p can have records the watch wants: a query that
// names proxies, proxy kinds, or HTTP fields (waypoint records only)
// skips the others.
func (w *watch) wants(p *proxyConn) bool {
	wl := w.req.GetWhitelist()
	if len(wl) == 0 {
		return true
	}
	for _, f := range wl {
		if len(f.Proxy) > 0 && !slices.Contains(f.Proxy, p.name) {
			continue
		}
		if len(f.ProxyKind) > 0 && !slices.Contains(f.ProxyKind, p.kind) {
			continue
		}
		if (len(f.HttpMethod) > 0 || len(f.HttpPath) > 0 || len(f.HttpStatus) > 0) && p.kind != logsv1.ProxyKind_WAYPOINT {
			continue
		}
		return true
	}
	return false
}

// startLeg sends req to p.
func (w *watch) startLeg(p *proxyConn, req *logsv1.WatchRequest) {
	r := w.r
	r.mu.Lock()
	r.nextID++
	l := &leg{id: r.nextID, proxy: p, w: w, startedCh: make(chan struct{})}
	r.legs[l.id] = l
	r.mu.Unlock()
	if !p.send(w.ctx, &logsv1.RelayCommand{Command: &logsv1.RelayCommand_Query_{Query: &logsv1.RelayCommand_Query{Id: l.id, Request: req}}}) {
		go l.finish()
		return
	}
	if !req.GetFollow() {
		// A proxy that does not start answering in time is left out.
		go func() {
			t := time.NewTimer(r.cfg.StartTimeout)
			defer t.Stop()
			select {
			case <-l.startedCh:
			case <-t.C:
				l.finish()
			case <-w.done:
			}
		}()
	}
}

// proxyJoined asks a proxy that (re)joined for what the watch follows:
// records since the newest one seen from it, or since the watch began.
func (w *watch) proxyJoined(p *proxyConn) {
	if !w.wants(p) {
		return
	}
	w.mu.Lock()
	since := w.start
	if t, ok := w.lastSeen[p.name]; ok {
		since = t.Add(time.Nanosecond)
	}
	w.mu.Unlock()
	req := proto.Clone(w.req).(*logsv1.WatchRequest)
	req.Last = uint64(1) << 32 // every kept record since
	if s := w.req.GetSince(); s == nil || s.AsTime().Before(since) {
		req.Since = timestamppb.New(since)
	}
	w.event(&logsv1.WatchResponse{Event: &logsv1.WatchResponse_ProxyStatus{ProxyStatus: &logsv1.ProxyStatus{
		State: logsv1.ProxyStatus_CONNECTED, Proxy: p.name, ProxyKind: p.kind, Instance: p.instance,
	}}})
	w.startLeg(p, req)
}

// proxyLeft tells the caller a proxy went away.
func (w *watch) proxyLeft(p *proxyConn) {
	if !w.wants(p) {
		return
	}
	w.event(&logsv1.WatchResponse{Event: &logsv1.WatchResponse_ProxyStatus{ProxyStatus: &logsv1.ProxyStatus{
		State: logsv1.ProxyStatus_DISCONNECTED, Proxy: p.name, ProxyKind: p.kind, Instance: p.instance,
	}}})
}

func (w *watch) event(resp *logsv1.WatchResponse) {
	select {
	case w.in <- item{resp: resp}:
	case <-w.done:
	}
}

// deliver hands one response of leg l to the merge loop, waiting while the
// caller is slow (which slows the proxy's Deliver stream, so that the
// proxy counts what its ring loses). It returns false when the watch has
// ended. Records outside the caller's namespaces are dropped: the proxy
// filtered them already; this is the relay's own check. What the proxy
// sends is attributed to it (records and losses carry its name and kind),
// and proxy status is the relay's to tell: a proxy's is dropped.
func (w *watch) deliver(ctx context.Context, l *leg, resp *logsv1.WatchResponse) bool {
	switch ev := resp.GetEvent().(type) {
	case *logsv1.WatchResponse_Lost:
		ev.Lost.Proxy, ev.Lost.Source = l.proxy.name, logsv1.Lost_PROXY
	case *logsv1.WatchResponse_Record:
	default:
		return true // proxy status, or an event this relay does not know
	}
	if rec := resp.GetRecord(); rec != nil {
		if !w.access.allows(rec) {
			return true
		}
		rec.Proxy, rec.ProxyKind = l.proxy.name, l.proxy.kind
		w.mu.Lock()
		if t := rec.GetTime().AsTime(); t.After(w.lastSeen[l.proxy.name]) {
			w.lastSeen[l.proxy.name] = t
		}
		w.mu.Unlock()
	}
	select {
	case w.in <- item{resp: resp}:
		return true
	case <-w.done:
	case <-ctx.Done():
	}
	return false
}

// merge sorts records by time within the window and sends them; open is
// the number of legs running (a watch without follow ends when they are
// all done).
func (w *watch) merge(stream grpc.ServerStreamingServer[logsv1.WatchResponse], open int) error {
	follow := w.req.GetFollow()
	window := w.r.cfg.Window
	var h recordHeap
	send := func(r *logsv1.Record) error {
		return stream.Send(&logsv1.WatchResponse{Event: &logsv1.WatchResponse_Record{Record: r}})
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case it := <-w.in:
			switch {
			case it.legDone != nil:
				open--
				if !follow && open <= 0 {
					return w.flushAll(&h, send)
				}
			case it.resp.GetRecord() != nil:
				heap.Push(&h, it.resp.GetRecord())
				if !follow && w.req.GetLast() > 0 {
					for uint64(h.Len()) > w.req.GetLast() {
						heap.Pop(&h) // keep the newest Last
					}
				} else if h.Len() > w.r.cfg.MaxBuffered {
					if err := send(heap.Pop(&h).(*logsv1.Record)); err != nil {
						return err
					}
				}
			default:
				if err := stream.Send(it.resp); err != nil {
					return err
				}
			}
		case <-timer.C:
		case <-w.ctx.Done():
			return nil
		}
		if !follow {
			continue
		}
		now := time.Now()
		for h.Len() > 0 && !h[0].GetTime().AsTime().Add(window).After(now) {
			if err := send(heap.Pop(&h).(*logsv1.Record)); err != nil {
				return err
			}
		}
		if h.Len() > 0 {
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
			timer.Reset(h[0].GetTime().AsTime().Add(window).Sub(now))
		}
	}
}

func (w *watch) flushAll(h *recordHeap, send func(*logsv1.Record) error) error {
	for h.Len() > 0 {
		if err := send(heap.Pop(h).(*logsv1.Record)); err != nil {
			return err
		}
	}
	return nil
}

// recordHeap is a min-heap of records by time.
type recordHeap []*logsv1.Record

func (h recordHeap) Len() int { return len(h) }
func (h recordHeap) Less(i, j int) bool {
	ti, tj := h[i].GetTime().AsTime(), h[j].GetTime().AsTime()
	if ti.Equal(tj) {
		return h[i].Seq < h[j].Seq
	}
	return ti.Before(tj)
}
func (h recordHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *recordHeap) Push(x any)   { *h = append(*h, x.(*logsv1.Record)) }
func (h *recordHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// restrict narrows req to the namespaces the caller may read: every
// whitelist filter that does not name namespaces gets them. A filter that
// names namespaces (those logstream.Namespaces checks) the caller may not
// read is PermissionDenied, as it is when the request names no others:
// the caller's rights were then looked up for every namespace, not for
// the filter's.
func restrict(req *logsv1.WatchRequest, a *Access) (*logsv1.WatchRequest, error) {
	if a.All {
		return req, nil
	}
	req = proto.Clone(req).(*logsv1.WatchRequest)
	if len(req.Whitelist) == 0 {
		req.Whitelist = []*logsv1.Filter{{}}
	}
	for _, f := range req.Whitelist {
		named := logstream.Namespaces(&logsv1.WatchRequest{Whitelist: []*logsv1.Filter{f}})
		if named == nil {
			f.Namespace = slices.Clone(a.Namespaces)
			continue
		}
		for _, ns := range named {
			if !slices.Contains(a.Namespaces, ns) {
				return nil, status.Errorf(codes.PermissionDenied, "user %q may not read namespace %q", a.User, ns)
			}
		}
	}
	return req, nil
}
