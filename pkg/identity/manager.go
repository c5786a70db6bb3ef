package identity

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of ManagerConfig.
const (
	DefaultTTL        = 24 * time.Hour
	DefaultMinBackoff = 500 * time.Millisecond
	DefaultMaxBackoff = 150 * time.Second
)

// ManagerConfig configures a Manager. The zero value works except for Requester, which is required.
type ManagerConfig struct {
	// Requester signs CSRs, usually a *CAClient. Required.
	Requester Requester
	// TTL is the lifetime requested for each certificate. Default 24h.
	TTL time.Duration
	// MinBackoff is the first delay before retrying a failed fetch. Default 500ms.
	MinBackoff time.Duration
	// MaxBackoff caps the delay between retries. Default 150s.
	MaxBackoff time.Duration
	// Logger receives refresh failures (warn) and successes (debug). Nil discards.
	Logger *slog.Logger
}

// Manager holds one certificate per identity. While Start runs, it refreshes each certificate at half of
// its lifetime, retrying failed fetches with per-identity exponential backoff (MinBackoff..MaxBackoff, with
// jitter). It is safe for concurrent use.
type Manager struct {
	cfg  ManagerConfig
	log  *slog.Logger
	wake chan struct{} // tells Start that the schedule changed; buffered 1

	mu      sync.Mutex
	started bool
	entries map[spiffeid.ID]*entry
}

// entry is the state of one identity.
type entry struct {
	cert      *Certificate // nil until the first successful fetch
	refreshAt time.Time    // when Start fetches next; zero while none is scheduled
	failures  int          // consecutive failed fetches
	call      *call        // the fetch in flight, if any
}

// call is one fetch, shared by every Get that arrives while it runs.
type call struct {
	done chan struct{} // closed when cert and err are set
	cert *Certificate
	err  error
}

// NewManager returns a Manager for cfg.
func NewManager(cfg ManagerConfig) *Manager {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{
		cfg:     cfg,
		log:     log.With("component", "identity"),
		wake:    make(chan struct{}, 1),
		entries: make(map[spiffeid.ID]*entry),
	}
}

// Start refreshes certificates when they are due until ctx is done, then waits for refreshes in flight and
// returns nil. It may be called once.
func (m *Manager) Start(ctx context.Context) error {
	m.mu.Lock()
	if m.started {
		m.mu.Unlock()
		return errors.New("identity: manager already started")
	}
	m.started = true
	m.mu.Unlock()

	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := m.startDue(ctx, &wg)
		wait := time.Hour
		if !next.IsZero() {
			wait = min(wait, time.Until(next))
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
		case <-timer.C:
		}
	}
}

// startDue starts a refresh for every identity that is due and returns the earliest time one is due
// next (zero if none is scheduled).
func (m *Manager) startDue(ctx context.Context, wg *sync.WaitGroup) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	var next time.Time
	for id, e := range m.entries {
		if e.call != nil || e.refreshAt.IsZero() {
			continue
		}
		if e.refreshAt.After(now) {
			if next.IsZero() || e.refreshAt.Before(next) {
				next = e.refreshAt
			}
			continue
		}
		c := &call{done: make(chan struct{})}
		e.call = c
		wg.Go(func() {
			start := time.Now()
			cert, err := m.fetch(ctx, id)
			retry := m.complete(id, e, c, cert, err, start)
			switch {
			case err != nil && ctx.Err() == nil:
				m.log.Warn("certificate refresh failed", "identity", id.String(), "retry_in", retry, "error", err)
			case err == nil:
				m.log.Debug("certificate refreshed", "identity", id.String(), "expires", cert.Leaf.NotAfter)
			}
		})
	}
	return next
}

// Get returns the certificate of id. A cached certificate that has not expired is returned at once;
// otherwise it is fetched now, and concurrent Gets for one id share one fetch. The id is kept, and
// refreshed while Start runs, until Forget.
func (m *Manager) Get(ctx context.Context, id spiffeid.ID) (*Certificate, error) {
	if id.IsZero() {
		return nil, errors.New("identity: get certificate for an empty id")
	}
	for {
		m.mu.Lock()
		e := m.entries[id]
		if e == nil {
			e = &entry{}
			m.entries[id] = e
		}
		if e.cert != nil && time.Now().Before(e.cert.Leaf.NotAfter) {
			cert := e.cert
			m.mu.Unlock()
			return cert, nil
		}
		if c := e.call; c != nil {
			m.mu.Unlock()
			select {
			case <-c.done:
			case <-ctx.Done():
				return nil, fmt.Errorf("identity: wait for certificate of %s: %w", id, ctx.Err())
			}
			if c.err == nil {
				return c.cert, nil
			}
			if isContextErr(c.err) && ctx.Err() == nil {
				continue // whoever started that fetch gave up; fetch again for ourselves
			}
			return nil, c.err
		}
		c := &call{done: make(chan struct{})}
		e.call = c
		m.mu.Unlock()
		start := time.Now()
		cert, err := m.fetch(ctx, id)
		m.complete(id, e, c, cert, err, start)
		return cert, err
	}
}

// fetch makes a new key and obtains a certificate for it.
func (m *Manager) fetch(ctx context.Context, id spiffeid.ID) (*Certificate, error) {
	key, csr, err := NewKeyAndCSR(id)
	if err != nil {
		return nil, err
	}
	chain, err := m.cfg.Requester.RequestCertificate(ctx, id, csr, m.cfg.TTL)
	if err != nil {
		return nil, fmt.Errorf("identity: fetch certificate for %s: %w", id, err)
	}
	return NewCertificate(id, key, chain)
}

// complete records the result of call c for entry e, schedules the next fetch and returns the delay
// until it.
func (m *Manager) complete(id spiffeid.ID, e *entry, c *call, cert *Certificate, err error, start time.Time) time.Duration {
	m.mu.Lock()
	c.cert, c.err = cert, err
	close(c.done)
	var delay time.Duration
	if m.entries[id] == e { // not forgotten meanwhile
		e.call = nil
		now := time.Now()
		if err == nil {
			e.cert = cert
			e.failures = 0
			e.refreshAt = refreshTime(cert, start)
		} else {
			e.failures++
			e.refreshAt = now.Add(m.backoff(e.failures))
		}
		delay = e.refreshAt.Sub(now)
	}
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
	return delay
}

// refreshTime is half-way through the certificate's lifetime, counted from when it was requested if the
// CA back-dated notBefore (Istio's CA does, by 2 minutes).
func refreshTime(cert *Certificate, requested time.Time) time.Time {
	from := cert.Leaf.NotBefore
	if requested.After(from) {
		from = requested
	}
	return from.Add(cert.Leaf.NotAfter.Sub(from) / 2)
}

// backoff returns the delay before retry number n (n >= 1): MinBackoff doubled per failure, capped at
// MaxBackoff, with ±20% jitter kept within MinBackoff..MaxBackoff.
func (m *Manager) backoff(n int) time.Duration {
	d := m.cfg.MinBackoff
	for i := 1; i < n && d < m.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, m.cfg.MaxBackoff)
	jittered := time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
	return min(max(jittered, m.cfg.MinBackoff), m.cfg.MaxBackoff)
}

// Forget stops refreshing id and drops its certificate.
func (m *Manager) Forget(id spiffeid.ID) {
	m.mu.Lock()
	delete(m.entries, id)
	m.mu.Unlock()
}

// Certificates returns the certificates held, sorted by ID, for /config_dump.
func (m *Manager) Certificates() []*Certificate {
	m.mu.Lock()
	certs := make([]*Certificate, 0, len(m.entries))
	for _, e := range m.entries {
		if e.cert != nil {
			certs = append(certs, e.cert)
		}
	}
	m.mu.Unlock()
	slices.SortFunc(certs, func(a, b *Certificate) int { return cmp.Compare(a.ID.String(), b.ID.String()) })
	return certs
}

// cached returns the latest certificate held for id, expired or not, or nil.
func (m *Manager) cached(id spiffeid.ID) *Certificate {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.entries[id]; e != nil {
		return e.cert
	}
	return nil
}

// isContextErr reports whether err comes from a cancelled or timed-out context, locally or as gRPC status.
func isContextErr(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	code := status.Code(err)
	return code == codes.Canceled || code == codes.DeadlineExceeded
}
