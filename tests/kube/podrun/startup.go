package podrun

import (
	"context"
	"os"
	"syscall"
	"time"
)

// probes runs c's startup probe, then, once it succeeded, its readiness
// probe, until ctx ends (the container exited or the pod stops). proc is
// the container's process.
func (p *pod) probes(ctx context.Context, c *container, proc *os.Process) {
	if p.startup(ctx, c, proc) {
		p.probe(ctx, c)
	}
}

// startup runs c's startup probe as the kubelet does: after
// initialDelaySeconds, every periodSeconds until one succeeds; no
// readiness probe runs before, and a container without a readiness probe
// becomes ready then. After failureThreshold failures in a row the
// container is killed (the kubelet sends SIGTERM first and waits the
// grace period; here SIGKILL at once), and its restart policy decides
// what follows. It reports whether the container started; true at once
// without a startup probe.
func (p *pod) startup(ctx context.Context, c *container, proc *os.Process) bool {
	pr := c.spec.StartupProbe
	if pr == nil {
		return true
	}
	period := seconds(pr.PeriodSeconds, 10)
	timeout := seconds(pr.TimeoutSeconds, 1)
	fail := threshold(pr.FailureThreshold)
	if pr.FailureThreshold <= 0 {
		fail = 3 // the API server's default
	}
	log := p.log.With("container", c.spec.Name)
	t := time.NewTimer(time.Duration(pr.InitialDelaySeconds) * time.Second)
	defer t.Stop()
	var failed int32
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := p.check(pctx, c.spec, pr)
		cancel()
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			log.Info("startup probe succeeded")
			if c.spec.ReadinessProbe == nil {
				p.mu.Lock()
				c.ready = true
				p.mu.Unlock()
				p.changed()
			}
			return true
		}
		failed++
		if failed >= fail {
			log.Warn("startup probe failed; killing the container", "failures", failed, "err", err)
			_ = proc.Signal(syscall.SIGKILL)
			return false
		}
		t.Reset(period)
	}
}
