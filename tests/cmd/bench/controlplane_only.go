package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/ambient-go/mesh/tests/bench"
)

// runControlPlaneOnly runs the control-plane figure alone (-only
// controlplane) and prints it; it writes no report.
func runControlPlaneOnly(ctx context.Context, o options) error {
	if err := os.RemoveAll(o.out); err != nil {
		return err
	}
	raiseFileLimit()
	say("machine: %s", bench.ReadMachine())
	cfg := bench.ControlPlaneConfig{BinDir: o.bin, Dir: filepath.Join(o.out, "control-plane"),
		Addr: netip.AddrFrom4([4]byte{127, randomBase(), 200, 1})}
	if o.quick {
		cfg.Pods, cfg.Services, cfg.Clients, cfg.Changes, cfg.Syncs = 2000, 400, 20, 10, 2
	}
	say("control plane: istiod-lite with %s pods, %s services, %s xDS clients", orDef(cfg.Pods, 10000), orDef(cfg.Services, 2000), orDef(cfg.Clients, 100))
	cp, err := bench.RunControlPlane(ctx, cfg)
	if err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	rd := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	fmt.Printf("resources in a full sync:                %d\n", cp.Resources)
	fmt.Printf("start to first full sync:                %s\n", cp.Load.Round(time.Millisecond))
	fmt.Printf("herd of clients synced:                  %s\n", cp.HerdSync.Round(time.Millisecond))
	fmt.Printf("full sync of a new client (median of %d): %s\n", len(cp.FullSync), bench.MedianDuration(cp.FullSync).Round(time.Millisecond))
	fmt.Printf("one change to all clients (%d changes):  p50 %s  p90 %s  p99 %s  max %s\n", cp.Change.Count, rd(cp.Change.P50), rd(cp.Change.P90), rd(cp.Change.P99), rd(cp.Change.Max))
	fmt.Printf("one change to each client:               p50 %s  p99 %s\n", rd(cp.ChangeEach.P50), rd(cp.ChangeEach.P99))
	fmt.Printf("changes some client missed (10 s):       %d\n", cp.Lost)
	fmt.Printf("istiod-lite RSS idle / peak:             %.0f MiB / %.0f MiB\n", float64(cp.RSS)/(1<<20), float64(cp.HWM)/(1<<20))
	fmt.Printf("istiod-lite CPU load / herd / per change: %s / %s / %s\n", cp.CPULoad.Round(10*time.Millisecond), cp.CPUHerd.Round(10*time.Millisecond), cp.CPUPerChange.Round(time.Millisecond))
	return nil
}
