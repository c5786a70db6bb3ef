package admin

import (
	"io"
	"os"
	"runtime"
	"time"

	"github.com/ambient-go/mesh/pkg/logbuf"
)

// Process holds the settings of a proxy process that are not its
// component's: how many threads run Go code and how its log is written
// (flags --worker-threads and --log-flush of ztunnel and waypoint). Apply
// puts them in force.
type Process struct {
	// WorkerThreads is GOMAXPROCS; 0 keeps Go's default (the CPUs of the
	// container's limit, or of the machine). The GOMAXPROCS environment
	// variable wins unless the flag is given.
	WorkerThreads int
	// LogFlush is how late a log line may be written: lines are written in
	// batches (pkg/logbuf). 0 writes each at once.
	LogFlush time.Duration

	log *logbuf.Writer
}

// LogFlushDefault is --log-flush's default.
const LogFlushDefault = 100 * time.Millisecond

// Apply sets GOMAXPROCS (explicit: WorkerThreads was given on the command
// line) and returns the writer for the process's log, which batches its
// writes to w. Close flushes it.
func (p *Process) Apply(w io.Writer, explicit bool) io.Writer {
	if p.WorkerThreads > 0 && (explicit || os.Getenv("GOMAXPROCS") == "") {
		runtime.GOMAXPROCS(p.WorkerThreads)
	}
	p.log = logbuf.New(w, p.LogFlush)
	return p.log
}

// Close writes the log lines still batched.
func (p *Process) Close() error {
	if p.log == nil {
		return nil
	}
	return p.log.Close()
}
