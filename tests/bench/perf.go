package bench

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// PerfTop samples process pid's stacks with perf (Linux perf_events, for
// processes without a pprof endpoint: the waypoint, HAProxy) for d into
// file, and returns perf report's cumulative profile by symbol (each
// symbol with the samples of everything it called, entries of at least
// 3 %, the first 45). It fails when perf is not installed.
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
	rep := exec.CommandContext(ctx, perf, "report", "-i", file, "--stdio", "--children", "-g", "none",
		"--sort", "symbol", "--percent-limit", "3")
	out, err := rep.Output()
	if err != nil {
		return "", fmt.Errorf("perf report: %w", err)
	}
	var b strings.Builder
	b.WriteString("Children      Self  Symbol\n")
	n := 0
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "# Samples") {
			b.WriteString(strings.TrimPrefix(line, "# "))
		}
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		if n++; n > 45 {
			break
		}
		// perf pads the symbol column with blanks and dashes.
		b.WriteString(strings.TrimRight(line, " -\n") + "\n")
	}
	return b.String(), nil
}

// PerfStat counts events (perf stat -e) of process pid, all its threads,
// for d, and returns each event's count.
func PerfStat(ctx context.Context, pid int, d time.Duration, events ...string) (map[string]float64, error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return nil, err
	}
	secs := max(1, int(d.Round(time.Second).Seconds()))
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, perf, "stat", "-x", ",", "-e", strings.Join(events, ","), "-p", fmt.Sprint(pid), "--", "sleep", fmt.Sprint(secs))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("perf stat: %w: %s", err, out)
	}
	return parsePerfStat(out, events)
}

// parsePerfStat reads perf stat's CSV output (-x ,): value, unit, event,
// ...; every event asked for must have a counted value.
func parsePerfStat(out []byte, events []string) (map[string]float64, error) {
	got := map[string]float64{}
	for line := range strings.Lines(string(out)) {
		f := strings.Split(strings.TrimSpace(line), ",")
		if len(f) < 3 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue // "<not counted>", "<not supported>"
		}
		got[f[2]] = v
	}
	for _, e := range events {
		if _, ok := got[e]; !ok {
			return nil, fmt.Errorf("perf stat counted no %s: %s", e, out)
		}
	}
	return got, nil
}
