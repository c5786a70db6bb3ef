package main

// profileNotes summarises what the ztunnel profiles showed when this
// harness was written (loopback, 2 cores); the raw profiles below are from
// the run that wrote this file.
const profileNotes = `Profiles are taken from each ztunnel's admin /debug/pprof/profile during a
mesh throughput run and a mesh saturation run (files in _out/bench/).

What dominated at the time of writing:

- **Syscalls, 60–65 % of ztunnel CPU** in both runs. At saturation (1 KiB
  requests) the destination ztunnel spends ~50 % of its samples in write(2):
  every 1 KiB DATA frame is one TLS record and one write (hbone
  serverConn.writeData → tlsWriter → bufio Flush → write), and the plain
  side (Relay.func2 → net.Conn.Write) is one more. Reads are ~20 %.
- **AES-GCM, ~19 %** of the source ztunnel during bulk throughput
  (gcmAesEnc): expected, and the same work stunnel does; the stunnel pair
  costs 1.0 CPU-s/GB per side against ztunnel's 1.2.
- **The HTTP/2 client's request body goes through an io.Pipe**
  (hbone clientStream.Write → io.PipeWriter.Write → http2
  clientStream.writeRequestBody): one more copy and a goroutine hand-off
  per write on the outbound side, plus runtime futex/usleep wake-ups (~8 %).
- Go runtime scheduling (futex, mcall, selectgo) ~10 %.
`

// optimisationNotes records data-path optimisations and their measured
// before/after ratios, and what the profiles suggest next.
const optimisationNotes = `None applied with this harness yet (the data-path code belongs to pkg/hbone
and ztunnel/proxy). Suggestions, in the order the profiles rank them:

1. Replace the outbound io.Pipe + x/net/http2 Transport request body with a
   CONNECT-only HTTP/2 client writer, as the server side already has
   (pkg/hbone/serverconn.go): write DATA frames straight from Relay's buffer
   into the TLS writer, no pipe, no extra goroutine hand-off.
2. Coalesce small writes: when several DATA frames (or a frame and its
   WINDOW_UPDATE) are ready, write them in one TLS record and one write(2)
   (flush on idle rather than per frame); at 1 KiB req/resp that halves the
   write syscalls on each ztunnel.
3. Read the plain-TCP side with a larger buffer (64 KiB) and send
   up to the peer's max frame size per DATA frame, so bulk transfers make
   fewer, larger TLS records (16 KiB each) per syscall.
4. Idle RSS (~21 MiB with 100 pods, target 15 MB): look at per-pod listener
   goroutines and the Prometheus registry; GOMEMLIMIT/GOGC tuning for the
   ztunnel process would show how much is uncollected garbage.
5. Control plane: a one-pod edit costs istiod-lite seconds of CPU with
   10,000 pods (re-reading/re-building everything) — make the local source
   re-parse only the changed file and the model incremental per object.
`

// l7ProfileNotes summarises where the waypoint's time went when the L7
// figures were written (perf profiles of the waypoint and of HAProxy at
// HTTP saturation, netns topology, 2 cores); the raw profiles below are
// from the run that wrote the file. The waypoint's code belongs to
// waypoint/ and pkg/: these are findings, not changes.
const l7ProfileNotes = `What the profiles showed at the time of writing (shares of each
process's samples; the raw profiles below are from this run):

- **Where the gap is.** HAProxy spent 79 % of its samples in the kernel
  (mostly the TCP send path, which on veth pairs also carries the
  receiver's softirq processing) and 21 % in HAProxy, OpenSSL, libc and
  the vDSO. The waypoint spent 43 % in the kernel and 57 % in its own code,
  the Go runtime and the vDSO. Applied to the saturation figures, that is
  about 0.08 CPU-s per 1000 requests of user time and 0.06 of kernel time
  for the waypoint, against 0.011 and 0.041 for HAProxy (0.052 in all):
  the waypoint's kernel time alone exceeds HAProxy's whole cost, and its
  user time is about seven times HAProxy's.
- **Two writes per request towards the upstream** (net/http Request.write
  17 %): net/http's Transport flushes a request's headers before copying
  a body that is not in memory (transferWriter.FlushHeaders), and the body
  here is the inbound HBONE stream, so each request becomes two HBONE
  DATA frames, two TLS records and two write(2) calls (hbone
  clientStream.Write → tlsWriter → write), and two frames more for the
  destination ztunnel to read. The answer goes back in one (finishRequest,
  12 %).
- **Goroutine hand-offs**: a request crosses the inbound HBONE read loop,
  the http.Server connection goroutine, the Transport's writeLoop, the
  outbound HBONE read loop and the Transport's readLoop; the scheduler
  shows as findRunnable 8 %, park_m 6 %, futex 4 %, sysmon 8 %, and perf
  counts 2.3 context switches per request against HAProxy's 1.1 (one
  event loop per thread, no hand-off).
- **Allocation and GC, ~20 %** (gcBgMarkWorker 11 %, mallocgc 9 %,
  bgsweep 4 %): per-request Request/Header copies in
  httputil.ReverseProxy, a 32 KiB copy buffer per request (mallocgcLarge
  2 %; ReverseProxy.BufferPool is not set), the access-log record.
- **Access log 5.6 %** (slog JSON, one line per request; HAProxy also
  logs one line per request), request metrics ~1.5 %
  (WithLabelValues on every request instead of a cached child),
  deadlines 1.3 %. Crypto is small at 1 KiB (AES-GCM below 1 %).

Suggestions for waypoint/ and pkg/hbone, largest first: send a request's
headers and a small body of known length in one DATA frame and one TLS
record (read a body of up to a few KiB before forwarding, or an upstream
HTTP/1.1 writer that does not flush between them); fewer goroutines per
request (write the request and read the answer on the request's own
goroutine instead of the Transport's loops); a BufferPool for the
ReverseProxy and fewer per-request allocations; cached metric children.
`
