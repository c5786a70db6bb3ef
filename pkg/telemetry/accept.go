package telemetry

import "github.com/prometheus/client_golang/prometheus"

// AcceptErrorsName counts the accept errors a listener retried (out of
// file descriptors, connection aborted before accept, ...), by listener.
const AcceptErrorsName = "ztunnel_accept_errors_total"

// AcceptErrors counts retried accept errors per listener: "hbone",
// "socks5", "outbound" (15001) or "inbound_plaintext" (15006). A nil
// *AcceptErrors counts nothing.
type AcceptErrors struct {
	vec *prometheus.CounterVec
}

// NewAcceptErrors creates the counter and registers it with reg (if not
// nil). It panics if it is already registered, like
// prometheus.MustRegister.
func NewAcceptErrors(reg prometheus.Registerer) *AcceptErrors {
	a := &AcceptErrors{vec: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: AcceptErrorsName,
		Help: "The total number of accept errors a listener retried (for example EMFILE: out of file descriptors)",
	}, []string{"listener"})}
	if reg != nil {
		reg.MustRegister(a.vec)
	}
	return a
}

// Inc counts one accept error of listener.
func (a *AcceptErrors) Inc(listener string) {
	if a == nil {
		return
	}
	a.vec.WithLabelValues(listener).Inc()
}

// Counter returns the counter of listener.
func (a *AcceptErrors) Counter(listener string) prometheus.Counter {
	return a.vec.WithLabelValues(listener)
}
