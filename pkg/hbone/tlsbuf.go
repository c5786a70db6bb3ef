package hbone

import (
	"bufio"
	"crypto/tls"
	"net"
	"sync"
)

// crypto/tls reads and writes its transport once per record (16 KiB at
// most), which makes syscalls the main cost of a bulk tunnel. rawConn sits
// under tls.Conn: once startBuffering was called (after the handshake, so
// that unauthenticated peers do not cost the buffer) it reads through a
// 64 KiB buffer, and while a batch is open (the span of one
// tlsWriter.Write) it collects the records and writes them with one syscall.
type rawConn struct {
	net.Conn
	br     *bufio.Reader // nil until startBuffering
	direct bool          // read into the caller's buffer: the peer sends little

	mu       sync.Mutex // orders all writes to Conn
	batching int
	wbuf     []byte
}

// newRawConn returns a rawConn on c, which reads and writes with raw
// system calls if c is a plain TCP connection (sock_unix.go).
func newRawConn(c net.Conn) *rawConn { return &rawConn{Conn: asSockConn(c)} }

// startBuffering makes reads go through the 64 KiB buffer. It must not run
// concurrently with Read.
func (c *rawConn) startBuffering() {
	if c.br == nil {
		c.br = bufio.NewReaderSize(c.Conn, 64<<10)
	}
}

// Read reads through the buffer while the peer streams, and straight into
// p while it sends little at a time (requests and responses of a few KiB),
// which saves a copy per message: a read of less than directReadMax that
// emptied the buffer makes the next reads direct, and a direct read of
// directReadMax or more makes them buffered again (a bulk transfer reads
// 64 KiB per system call, direct reads only what p holds).
func (c *rawConn) Read(p []byte) (int, error) {
	if c.br == nil {
		return c.Conn.Read(p)
	}
	if c.direct && c.br.Buffered() == 0 {
		n, err := c.Conn.Read(p)
		c.direct = n < directReadMax
		return n, err
	}
	n, err := c.br.Read(p)
	c.direct = n < directReadMax && c.br.Buffered() == 0
	return n, err
}

// directReadMax is the size of a read from which rawConn reads through its
// buffer again.
const directReadMax = 4 << 10

func (c *rawConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.batching > 0 {
		c.wbuf = append(c.wbuf, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *rawConn) begin() {
	c.mu.Lock()
	c.batching++
	c.mu.Unlock()
}

// end closes a batch and writes what was collected.
func (c *rawConn) end() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batching--
	if len(c.wbuf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.wbuf)
	if cap(c.wbuf) > 4<<20 {
		c.wbuf = nil
	} else {
		c.wbuf = c.wbuf[:0]
	}
	return err
}

// tlsWriter writes through a tls.Conn on a rawConn, one syscall per Write.
// The tls.Conn's config must come from oneRecordPerWrite.
type tlsWriter struct {
	tc  *tls.Conn
	raw *rawConn
}

func (w tlsWriter) Write(p []byte) (int, error) {
	if len(p) <= maxRecordPayload {
		// One record, so one write to raw: no batch to copy it into.
		return w.tc.Write(p)
	}
	w.raw.begin()
	n, err := w.tc.Write(p)
	if ferr := w.raw.end(); err == nil && ferr != nil {
		err = ferr
		n = 0
	}
	return n, err
}

// maxRecordPayload is the most plaintext crypto/tls puts in one record
// (RFC 8446 §5.1).
const maxRecordPayload = 16 << 10

// oneRecordPerWrite returns cfg, or a copy, with dynamic record sizing
// disabled, also in the configs its GetConfigForClient returns: a write of
// up to maxRecordPayload is then one TLS record, which tlsWriter relies
// on. (Dynamic sizing sends the first 128 KB of a connection in records
// of about one TCP segment, for browsers on lossy links; a tunnel's
// frames are better off in as few records as possible.)
func oneRecordPerWrite(cfg *tls.Config) *tls.Config {
	if cfg.DynamicRecordSizingDisabled && cfg.GetConfigForClient == nil {
		return cfg
	}
	cfg = cfg.Clone()
	cfg.DynamicRecordSizingDisabled = true
	if get := cfg.GetConfigForClient; get != nil {
		cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := get(hello)
			if err != nil || c == nil || c.DynamicRecordSizingDisabled {
				return c, err
			}
			c = c.Clone()
			c.DynamicRecordSizingDisabled = true
			return c, nil
		}
	}
	return cfg
}
