package bench

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// PerfTop samples process pid's stacks with perf (Linux perf_events, for
// processes without a pprof endpoint: the waypoint, HAProxy) for d into
// file, and returns perf report's flat profile by symbol (entries of at
// least 1 %). It fails when perf is not installed.
func PerfTop(ctx context.Context, pid int, d time.Duration, file string) (string, error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return "", err
	}
	secs := max(1, int(d.Round(time.Second).Seconds()))
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	rec := exec.CommandContext(ctx, perf, "record", "-q", "-F", "499", "-g", "-p", fmt.Sprint(pid), "-o", file, "--", "sleep", fmt.Sprint(secs))
	if out, err := rec.CombinedOutput(); err != nil {
		return "", fmt.Errorf("perf record: %w: %s", err, out)
	}
	rep := exec.CommandContext(ctx, perf, "report", "-i", file, "--stdio", "--no-children", "-g", "none",
		"--sort", "dso,symbol", "--percent-limit", "1")
	out, err := rep.Output()
	if err != nil {
		return "", fmt.Errorf("perf report: %w", err)
	}
	var b strings.Builder
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		b.WriteString(line)
	}
	return b.String(), nil
}
