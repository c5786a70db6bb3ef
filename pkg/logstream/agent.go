package logstream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// AgentConfig configures an Agent. Conn and Service are required.
type AgentConfig struct {
	// Conn is the proxy's connection to istiod-lite (TLS verified against
	// the mesh root; plaintext only to the loopback test port).
	Conn grpc.ClientConnInterface
	// Token authenticates the proxy, as on its xDS stream; nil sends none.
	Token func(context.Context) (string, error)
	// Service answers the relay's queries.
	Service *Service
	// MinBackoff and MaxBackoff bound the wait between reconnections;
	// defaults 500ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
}

// Agent carries a proxy's LogStream back to istiod-lite's relay: it keeps
// a LogRelay.Connect stream open (reconnecting with backoff), and answers
// each query on a Deliver stream of its own, so that a slow caller holds
// up only its own stream (HTTP/2 flow control is per stream).
type Agent struct {
	cfg      AgentConfig
	log      *slog.Logger
	client   logsv1.LogRelayClient
	instance string
}

// NewAgent returns an agent; Start runs it.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.Conn == nil || cfg.Service == nil {
		return nil, errors.New("logstream: Conn and Service are required")
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &Agent{
		cfg:      cfg,
		log:      log.With("component", "logstream-agent"),
		client:   logsv1.NewLogRelayClient(cfg.Conn),
		instance: hex.EncodeToString(b[:]),
	}, nil
}

// Instance is this process's instance id, new at every start.
func (a *Agent) Instance() string { return a.instance }

// Start keeps the agent connected until ctx is done.
func (a *Agent) Start(ctx context.Context) error {
	backoff := a.cfg.MinBackoff
	for {
		began := time.Now()
		err := a.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(began) > a.cfg.MaxBackoff {
			backoff = a.cfg.MinBackoff
		}
		a.log.Debug("log relay stream ended", "error", fmt.Sprint(err), "retry_in", backoff.String())
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, a.cfg.MaxBackoff)
	}
}

func (a *Agent) authorize(ctx context.Context) (context.Context, error) {
	if a.cfg.Token == nil {
		return ctx, nil
	}
	tok, err := a.cfg.Token(ctx)
	if err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok), nil
}

// session runs one Connect stream and the queries it brings.
func (a *Agent) session(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	actx, err := a.authorize(ctx)
	if err != nil {
		return err
	}
	stream, err := a.client.Connect(actx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	svc := a.cfg.Service
	if err := stream.Send(&logsv1.ProxyMessage{Hello: &logsv1.ProxyMessage_Hello{
		Kind: svc.cfg.Kind, Name: svc.cfg.Name, Instance: a.instance,
	}}); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		queries = map[uint64]context.CancelFunc{}
	)
	defer func() {
		cancel()
		wg.Wait()
	}()
	for {
		cmd, err := stream.Recv()
		if err != nil {
			return err
		}
		switch c := cmd.Command.(type) {
		case *logsv1.RelayCommand_Query_:
			id := c.Query.GetId()
			qctx, qcancel := context.WithCancel(actx)
			mu.Lock()
			if old := queries[id]; old != nil {
				old()
			}
			queries[id] = qcancel
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					qcancel()
					delete(queries, id)
					mu.Unlock()
				}()
				if err := a.deliver(qctx, id, c.Query.GetRequest()); err != nil && qctx.Err() == nil {
					a.log.Debug("log query ended", "query", id, "error", err.Error())
				}
			}()
		case *logsv1.RelayCommand_Cancel:
			mu.Lock()
			if q := queries[c.Cancel]; q != nil {
				q()
			}
			mu.Unlock()
		}
	}
}

// deliver answers one query on its own Deliver stream.
func (a *Agent) deliver(ctx context.Context, id uint64, req *logsv1.WatchRequest) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ds, err := a.client.Deliver(ctx)
	if err != nil {
		return err
	}
	if err := ds.Send(&logsv1.Delivery{QueryId: id, Instance: a.instance}); err != nil {
		return err
	}
	err = a.cfg.Service.Watch(ctx, req, func(rs ...*logsv1.WatchResponse) error {
		return ds.Send(&logsv1.Delivery{Responses: rs})
	})
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil
	}
	_, err = ds.CloseAndRecv()
	return err
}
