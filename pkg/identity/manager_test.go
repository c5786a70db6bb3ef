package identity

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	sleepID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	echoID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/echo")
)

// startManager runs m.Start until the test ends.
func startManager(t *testing.T, m *Manager) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start() = %v, want nil", err)
		}
	})
}

// eventually polls cond every 10ms for up to timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestManagerGetCaches(t *testing.T) {
	s := newTestSigner(t, "cluster.local")
	m := NewManager(ManagerConfig{Requester: s})
	ctx := t.Context()
	first, err := m.Get(ctx, sleepID)
	if err != nil {
		t.Fatalf("Get(%q) error = %v", sleepID, err)
	}
	second, err := m.Get(ctx, sleepID)
	if err != nil {
		t.Fatalf("Get(%q) again error = %v", sleepID, err)
	}
	if first != second {
		t.Errorf("Get() twice returned different certificates, want the cached one")
	}
	if _, err := m.Get(ctx, echoID); err != nil {
		t.Fatalf("Get(%q) error = %v", echoID, err)
	}
	if got := len(s.requestTimes()); got != 2 {
		t.Errorf("requests = %d, want 2", got)
	}
	if s.ttls[0] != DefaultTTL {
		t.Errorf("requested ttl = %v, want %v", s.ttls[0], DefaultTTL)
	}
	var ids []string
	for _, c := range m.Certificates() {
		ids = append(ids, c.ID.String())
	}
	if want := []string{echoID.String(), sleepID.String()}; len(ids) != 2 || ids[0] != want[0] || ids[1] != want[1] {
		t.Errorf("Certificates() IDs = %v, want %v", ids, want)
	}

	m.Forget(sleepID)
	if got := len(m.Certificates()); got != 1 {
		t.Errorf("after Forget, len(Certificates()) = %d, want 1", got)
	}
	if _, err := m.Get(ctx, sleepID); err != nil {
		t.Fatalf("Get after Forget error = %v", err)
	}
	if got := len(s.requestTimes()); got != 3 {
		t.Errorf("after Forget and Get, requests = %d, want 3", got)
	}
}

func TestManagerSharedFetch(t *testing.T) {
	s := newTestSigner(t, "cluster.local")
	s.gate = make(chan struct{})
	m := NewManager(ManagerConfig{Requester: s})

	const n = 10
	certs := make([]*Certificate, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { certs[i], errs[i] = m.Get(t.Context(), sleepID) })
	}
	eventually(t, 5*time.Second, "the first request", func() bool { return len(s.requestTimes()) == 1 })
	time.Sleep(50 * time.Millisecond) // let the other Gets join the fetch in flight
	close(s.gate)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Get #%d error = %v", i, errs[i])
		}
		if certs[i] != certs[0] {
			t.Errorf("Get #%d returned another certificate than Get #0", i)
		}
	}
	if got := len(s.requestTimes()); got != 1 {
		t.Errorf("requests = %d, want 1 shared fetch", got)
	}
}

func TestManagerGetContextCancelled(t *testing.T) {
	s := newTestSigner(t, "cluster.local")
	s.gate = make(chan struct{})
	m := NewManager(ManagerConfig{Requester: s})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := m.Get(ctx, sleepID); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get() with an expiring context error = %v, want DeadlineExceeded", err)
	}
	close(s.gate)
	if _, err := m.Get(t.Context(), sleepID); err != nil {
		t.Errorf("Get() afterwards error = %v, want nil", err)
	}
}

func TestManagerRefreshAtHalfLife(t *testing.T) {
	s := newTestSigner(t, "cluster.local")
	m := NewManager(ManagerConfig{Requester: s, TTL: 2 * time.Second})
	startManager(t, m)
	first, err := m.Get(t.Context(), sleepID)
	if err != nil {
		t.Fatalf("Get() error = %v", err)
	}
	eventually(t, 5*time.Second, "a refreshed certificate", func() bool {
		c := m.Certificates()
		return len(c) == 1 && c[0] != first
	})
	reqs := s.requestTimes()
	if len(reqs) < 2 {
		t.Fatalf("requests = %d, want at least 2", len(reqs))
	}
	half := first.Leaf.NotBefore.Add(first.Leaf.NotAfter.Sub(first.Leaf.NotBefore) / 2)
	// NotBefore has one-second precision; allow for the truncation.
	if reqs[1].Before(half.Add(-time.Second)) || !reqs[1].Before(first.Leaf.NotAfter) {
		t.Errorf("refresh at %v, want about half-life %v and before expiry %v", reqs[1], half, first.Leaf.NotAfter)
	}
	if got, err := m.Get(t.Context(), sleepID); err != nil || got == first {
		t.Errorf("Get() after refresh = same certificate or error %v, want the refreshed one", err)
	}
}

func TestManagerExpiredCertificateFetchedFresh(t *testing.T) {
	s := newTestSigner(t, "cluster.local")
	m := NewManager(ManagerConfig{Requester: s, TTL: time.Second}) // not started: no refresh
	first, err := m.Get(t.Context(), sleepID)
	if err != nil {
		t.Fatalf("Get() error = %v", err)
	}
	time.Sleep(time.Until(first.Leaf.NotAfter) + 10*time.Millisecond)
	second, err := m.Get(t.Context(), sleepID)
	if err != nil {
		t.Fatalf("Get() after expiry error = %v", err)
	}
	if second == first || !time.Now().Before(second.Leaf.NotAfter) {
		t.Errorf("Get() after expiry returned the expired certificate, want a fresh one")
	}
}

func TestManagerBackoff(t *testing.T) {
	s := newTestSigner(t, "cluster.local")
	s.failNext(4)
	const minB, maxB = 20 * time.Millisecond, 80 * time.Millisecond
	m := NewManager(ManagerConfig{Requester: s, MinBackoff: minB, MaxBackoff: maxB})
	startManager(t, m)
	if _, err := m.Get(t.Context(), sleepID); !errors.Is(err, errSignerDown) {
		t.Fatalf("Get() error = %v, want %v", err, errSignerDown)
	}
	eventually(t, 5*time.Second, "a certificate after retries", func() bool { return len(m.Certificates()) == 1 })
	reqs := s.requestTimes()
	if len(reqs) != 5 {
		t.Fatalf("requests = %d, want 5 (4 failures, then success)", len(reqs))
	}
	// Retry i waits at least 80% of min(minB*2^(i-1), maxB).
	for i, want := range []time.Duration{16 * time.Millisecond, 32 * time.Millisecond, 64 * time.Millisecond, 64 * time.Millisecond} {
		if gap := reqs[i+1].Sub(reqs[i]); gap < want {
			t.Errorf("retry %d after %v, want at least %v", i+1, gap, want)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	m := NewManager(ManagerConfig{Requester: newTestSigner(t, "cluster.local")})
	tests := []struct {
		failures int
		lo, hi   time.Duration
	}{
		{failures: 1, lo: 500 * time.Millisecond, hi: 600 * time.Millisecond},
		{failures: 2, lo: 800 * time.Millisecond, hi: 1200 * time.Millisecond},
		{failures: 5, lo: 6400 * time.Millisecond, hi: 9600 * time.Millisecond},
		{failures: 9, lo: 102400 * time.Millisecond, hi: 150 * time.Second},
		{failures: 10, lo: 120 * time.Second, hi: 150 * time.Second},
		{failures: 1000, lo: 120 * time.Second, hi: 150 * time.Second},
	}
	for _, tt := range tests {
		for range 50 {
			if got := m.backoff(tt.failures); got < tt.lo || got > tt.hi {
				t.Errorf("backoff(%d) = %v, want in [%v, %v]", tt.failures, got, tt.lo, tt.hi)
			}
		}
	}
}

func TestManagerStartTwice(t *testing.T) {
	m := NewManager(ManagerConfig{Requester: newTestSigner(t, "cluster.local")})
	startManager(t, m)
	eventually(t, time.Second, "Start to begin", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.started
	})
	if err := m.Start(t.Context()); err == nil {
		t.Error("second Start() = nil, want error")
	}
}
