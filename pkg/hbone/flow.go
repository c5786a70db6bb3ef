package hbone

// Flow control (RFC 9113 §5.2, §6.9), the same for a connection and a
// stream, on the client and the server: an inflow is a window we grant the
// peer, an outflow one the peer grants us. x/net/http2 keeps its own in one
// small flow.go for the same reason. Both are guarded by the connection's
// mu.

// maxWindow is the largest flow-control window (RFC 9113 §6.9.1).
const maxWindow = 1<<31 - 1

// inflow is a receive window: what the peer may still send, and what was
// consumed (read, or discarded) but not yet returned by WINDOW_UPDATE.
type inflow struct {
	avail   int64
	unacked int64
}

// take accounts for n received bytes (padding included); false if the peer
// sent more than the window allowed.
func (f *inflow) take(n int64) bool {
	if n > f.avail {
		return false
	}
	f.avail -= n
	return true
}

// add gives n consumed bytes back. It returns the WINDOW_UPDATE increment
// to send once a quarter of size has accumulated, else 0: a batched update
// spares the peer a frame per read.
func (f *inflow) add(n, size int64) uint32 {
	f.unacked += n
	if f.unacked < size/4 {
		return 0
	}
	inc := f.unacked
	f.avail += inc
	f.unacked = 0
	return uint32(inc)
}

// outflow is a send window: what the peer still lets us send. It goes
// negative when the peer shrinks SETTINGS_INITIAL_WINDOW_SIZE.
type outflow struct{ n int64 }

// add grows the window by n (a WINDOW_UPDATE, or a change of the initial
// window, which may be negative); false if it now exceeds maxWindow, a
// flow-control error.
func (f *outflow) add(n int64) bool {
	f.n += n
	return f.n <= maxWindow
}

// take spends n bytes of the window.
func (f *outflow) take(n int64) { f.n -= n }
