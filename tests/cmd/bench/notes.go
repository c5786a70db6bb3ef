package main

// The report's prose is derived from the run: what ran (versions, loads,
// durations) and what the profiles of this run show. Nothing here is a
// finding written down in advance.

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// profileCategories are the shares derive from a ztunnel CPU profile:
// samples with a frame matching each expression (pprof -focus), so a
// sample can count in more than one.
var profileCategories = []struct{ name, focus string }{
	{"system calls of package syscall (socket reads and writes)", `^syscall\.`},
	{"AES-GCM", `crypto/internal/fips140/aes`},
	{"runtime.memmove (copies)", `^runtime\.memmove$`},
	{"scheduler (runtime.schedule, with its netpoll and futex sleeps)", `^runtime\.schedule$`},
	{"allocation and GC (mallocgc, mark and sweep workers)", `^runtime\.(mallocgc|gcBgMarkWorker|bgsweep)$`},
	{"HTTP/2 and HBONE (package pkg/hbone)", `/pkg/hbone\.`},
}

var pprofShowing = regexp.MustCompile(`Showing nodes accounting for [^,]+, ([0-9.]+)% of (\S+) total`)

// profileShares summarises a CPU profile as the share of its samples in
// each of profileCategories, computed by go tool pprof.
func profileShares(ctx context.Context, bin, file string) (string, error) {
	var parts []string
	var total string
	for _, c := range profileCategories {
		out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=1000000", "-nodefraction=0", "-edgefraction=0",
			"-focus="+c.focus, bin, file).Output()
		if err != nil {
			return "", fmt.Errorf("go tool pprof -focus %s: %w", c.focus, err)
		}
		pct := 0.0
		if m := pprofShowing.FindSubmatch(out); m != nil {
			pct, _ = strconv.ParseFloat(string(m[1]), 64)
			total = string(m[2])
		} // no line: no sample matched
		parts = append(parts, fmt.Sprintf("%s %.0f %%", c.name, pct))
	}
	return fmt.Sprintf("of %s of samples: %s.", total, strings.Join(parts, "; ")), nil
}

// version is the first line of cmd's output that contains want, or "?".
func version(ctx context.Context, want string, name string, args ...string) string {
	out, _ := exec.CommandContext(ctx, name, args...).CombinedOutput()
	for line := range strings.Lines(string(out)) {
		if strings.Contains(line, want) {
			return strings.Join(strings.Fields(line), " ")
		}
	}
	return "?"
}

// versions describes the software of the run.
func versions(ctx context.Context, o options) string {
	gov := version(ctx, "go1", "go", "version", o.bin+"/ztunnel")
	if _, v, ok := strings.Cut(gov, ": "); ok {
		gov = v
	}
	return fmt.Sprintf("ztunnel and floorrelay built with %s; %s (%s)",
		gov, version(ctx, "stunnel", o.stunnel, "-version"), strings.TrimPrefix(version(ctx, "Running", o.stunnel, "-version"), "Running with "))
}
