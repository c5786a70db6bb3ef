// Package logstream keeps a proxy's recent access-log records and streams
// them, filtered where they are produced, to whoever asks: `meshctl logs`
// through istiod-lite's relay.
//
// A Ring holds the last N records of a ztunnel or waypoint; it is the
// accesslog.Logger's sink, so every record the proxy writes lands in it,
// early denies included, whatever the log level. Writing one costs a lock
// and a copy and never waits for a reader: each reader keeps its own
// position in the ring, and a reader that falls more than N records behind
// skips ahead and is told how many it lost (Lost in the stream, and the
// counter logstream_lost_records_total).
//
// Service answers WatchRequests (backlog of the last N matches, then
// follow) from a Ring. It is served as the gRPC LogStream service on any
// listener (Server), and carried back to istiod-lite over the proxy's own
// authenticated connection by an Agent: the proxy dials istiod-lite's
// LogRelay, says who it is, and opens one Deliver stream per query the
// relay forwards. A proxy therefore opens no port for its logs.
package logstream
