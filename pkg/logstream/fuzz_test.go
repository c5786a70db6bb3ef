package logstream

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// FuzzFilter: any WatchRequest (as a caller or the relay sends it) and any
// Record. Compile never panics and neither does Match.
//
// Properties: Compile is deterministic and survives a protobuf round trip;
// a record matched when Namespaces names namespaces is in one of them at
// either end (the relay authorizes on that); a blacklist filter added
// never adds a match, a whitelist filter added to a non-empty whitelist
// never removes one; a filter both white- and blacklisted matches nothing;
// a record older than since never matches.
func FuzzFilter(f *testing.F) {
	f.Fuzz(func(t *testing.T, reqBytes, recBytes []byte) {
		req := &logsv1.WatchRequest{}
		r := &logsv1.Record{}
		if proto.Unmarshal(reqBytes, req) != nil || proto.Unmarshal(recBytes, r) != nil {
			return
		}
		m, err := Compile(req)
		again, _ := proto.Marshal(req)
		req2 := &logsv1.WatchRequest{}
		if uerr := proto.Unmarshal(again, req2); uerr != nil {
			t.Fatalf("round trip of %v: %v", req, uerr)
		}
		m2, err2 := Compile(req2)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("Compile(%v) = %v, but %v after a protobuf round trip", req, err, err2)
		}
		if err != nil {
			return
		}
		match := m.Match(r)
		if m2.Match(r) != match {
			t.Fatalf("Match(%v) = %v, but %v after a protobuf round trip of the request", r, match, !match)
		}
		if ns := Namespaces(req); ns != nil && match &&
			!slices.Contains(ns, r.GetSource().GetNamespace()) && !slices.Contains(ns, r.GetDestination().GetNamespace()) {
			t.Fatalf("request %v names namespaces %q but matches record %v", req, ns, r)
		}
		if s := req.GetSince(); s != nil && match && r.GetTime().AsTime().Before(s.AsTime()) {
			t.Fatalf("record at %v matched, since %v", r.GetTime().AsTime(), s.AsTime())
		}
		for i, fl := range req.GetWhitelist() {
			// fl also blacklisted: nothing fl alone would let through.
			both := proto.Clone(req).(*logsv1.WatchRequest)
			both.Whitelist = []*logsv1.Filter{fl}
			both.Blacklist = append(both.Blacklist, fl)
			if mb, err := Compile(both); err != nil || mb.Match(r) {
				t.Fatalf("whitelist filter %d also blacklisted: Compile = %v, Match(%v) = true", i, err, r)
			}
			// Fewer whitelist filters: never more matches.
			fewer := proto.Clone(req).(*logsv1.WatchRequest)
			fewer.Whitelist = slices.Delete(fewer.Whitelist, i, i+1)
			if len(fewer.Whitelist) > 0 {
				if mf, err := Compile(fewer); err != nil || (mf.Match(r) && !match) {
					t.Fatalf("without whitelist filter %d the record %v matches (Compile: %v); with it, not", i, r, err)
				}
			}
		}
		for i := range req.GetBlacklist() {
			fewer := proto.Clone(req).(*logsv1.WatchRequest)
			fewer.Blacklist = slices.Delete(fewer.Blacklist, i, i+1)
			if mf, err := Compile(fewer); err != nil || (match && !mf.Match(r)) {
				t.Fatalf("blacklist filter %d: removing it loses record %v (Compile: %v)", i, r, err)
			}
		}
	})
}

// FuzzRing: any sequence of operations on a ring of any size: add a
// record, read from a position (relative to the oldest kept record or
// the next one) into a buffer of a given size, and at the end a Watch of
// the last k matching records (no follow).
//
// Properties: sequence numbers are 1, 2, ... with no gap; a read returns
// consecutive records starting at the position asked for or the oldest
// kept, each the one added with that number; it returns as many as fit
// and are kept; lost counts exactly the records overwritten from the
// position asked for (never more than were added); next is the position
// after the last returned. Watch sends the newest min(k, kept) records,
// oldest first, with their sequence numbers.
func FuzzRing(f *testing.F) {
	f.Fuzz(func(t *testing.T, size uint8, ops []byte, last uint8) {
		if len(ops) > 4096 {
			return
		}
		r := NewRing(int(size%64) + 1)
		sz := uint64(r.Size())
		added := uint64(0)
		buf := make([]entry, 64)
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i], ops[i+1]
			switch op % 3 {
			case 0: // add arg+1 records
				for range int(arg%8) + 1 {
					added++
					r.Add(rec(uint16(added)), time.Duration(added))
				}
			case 1, 2: // read
				next := r.Next()
				if next != added+1 {
					t.Fatalf("Next() = %d after %d adds", next, added)
				}
				oldest := r.oldest()
				if want := uint64(1); added >= sz {
					want = added - sz + 1
					if oldest != want {
						t.Fatalf("oldest() = %d, want %d (size %d, %d added)", oldest, want, sz, added)
					}
				} else if oldest != want {
					t.Fatalf("oldest() = %d, want 1", oldest)
				}
				var from uint64
				if op%3 == 1 {
					from = oldest + uint64(arg%16) // from within or past the kept
				} else {
					from = max(1, next-min(next, uint64(arg))) // from up to 255 back
				}
				out := buf[:int(op>>2)%len(buf)]
				n, nx, lost := r.read(from, out)
				start := max(from, oldest)
				wantN := 0
				if start < next {
					wantN = int(min(uint64(len(out)), next-start))
				}
				wantLost := uint64(0)
				if from < oldest {
					wantLost = oldest - from
				}
				if n != wantN || lost != wantLost || (n > 0 && nx != start+uint64(n)) {
					t.Fatalf("read(%d, len %d) with oldest %d, next %d = %d, next %d, lost %d; want %d, next %d, lost %d",
						from, len(out), oldest, next, n, nx, lost, wantN, start+uint64(wantN), wantLost)
				}
				if lost > added {
					t.Fatalf("lost %d of %d added", lost, added)
				}
				for k, e := range out[:n] {
					if e.seq != start+uint64(k) || uint64(e.rec.SrcAddr.Port()) != uint64(uint16(e.seq)) || e.dur != time.Duration(e.seq) {
						t.Fatalf("read(%d)[%d] = seq %d, port %d, dur %v; want seq %d", from, k, e.seq, e.rec.SrcAddr.Port(), e.dur, start+uint64(k))
					}
				}
			}
		}

		// The backlog of a Watch without follow: the last k kept.
		s := NewService(Config{Ring: r, Name: "node-a", Kind: logsv1.ProxyKind_ZTUNNEL})
		var got []uint64
		err := s.Watch(context.Background(), &logsv1.WatchRequest{Last: uint64(last)}, func(rs ...*logsv1.WatchResponse) error {
			for _, resp := range rs {
				rec := resp.GetRecord()
				if rec == nil || rec.GetProxy() != "node-a" || rec.GetSource().GetAddr() != netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(rec.GetSeq())).String() {
					t.Fatalf("Watch sent %v", resp)
				}
				got = append(got, rec.GetSeq())
			}
			return nil
		})
		if err != nil {
			t.Fatalf("Watch: %v", err)
		}
		kept := min(added, sz)
		want := kept
		if last > 0 {
			want = min(kept, uint64(last))
		}
		var wantSeq []uint64
		for q := added - want + 1; q <= added; q++ {
			wantSeq = append(wantSeq, q)
		}
		if !slices.Equal(got, wantSeq) {
			t.Fatalf("Watch(last %d) of a ring of %d with %d added sent seqs %v, want %v", last, sz, added, got, wantSeq)
		}
	})
}
