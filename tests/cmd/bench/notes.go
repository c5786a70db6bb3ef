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
// figures were written (a perf profile of the waypoint at HTTP saturation,
// netns topology, 2 cores); the raw profiles below are from the run that
// wrote the file. The waypoint's code belongs to waypoint/ and pkg/: these
// are findings, not changes.
const l7ProfileNotes = `What the waypoint's profile showed at the time of writing (cumulative
shares of its samples; the raw profiles below are from this run):

- **write(2), ~19 %**, and syscalls in all ~35 %: every request costs at
  least one HBONE DATA frame, one TLS record and one write(2) in each
  direction on each side (request to the upstream ztunnel through
  net/http's Transport writeLoop → hbone clientStream.Write → tlsWriter;
  response back through the server's chunkWriter → hbone serverStream),
  with no coalescing of the HTTP/2 frames and the TLS record of one
  request. HAProxy reads and writes each side once per request as well,
  but does so from one event loop without hand-offs.
- **Goroutine hand-offs, ~15 %** (runtime.findRunnable, futex wake-ups,
  schedule): each request crosses the inbound HBONE connection's read
  loop → the http.Server's goroutine → the Transport's writeLoop → the
  outbound HBONE connection's read loop → the Transport's readLoop → back:
  five goroutines per request, each wake-up a futex on 2 cores.
- **Allocation and GC, ~20 %** (mallocgc ~11 %, gcBgMarkWorker ~9 %):
  per-request http.Request/Header copies in httputil.ReverseProxy, a 32 KiB
  copy buffer per request (mallocgcLarge; ReverseProxy.BufferPool is not
  set), the access-log record and its JSON encoding.
- **Access log ~6 %** (slog JSON, one line per request; HAProxy writes one
  line per request too) and **request metrics ~2.5 %**
  (GetMetricWithLabelValues for every request instead of a cached child).
- Crypto is small at 1 KiB (AES-GCM below 2 %).

Suggestions for waypoint/ and pkg/hbone, in that order: a BufferPool for
the ReverseProxy; flush the HTTP/2 DATA frame of a request and its
headers in one TLS record (and one write); cache metric children per
label set; and fewer goroutine hops per request (an HTTP/1.1 upstream
client that writes the request and reads the answer on the request's
own goroutine rather than net/http's Transport read/write loops).
`
