package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
)

// goFlags make the binaries static and reproducible: no cgo, no file
// system paths, no VCS stamp, no build id (it hashes the inputs' paths),
// no symbol table or DWARF (stack traces keep function names and lines).
// grpcnotrace: no binary serves gRPC's /debug/requests, and the
// html/template behind it keeps every exported method linked (a fifth of
// ztunnel's size; docs/optimisations.md, "Binary size").
var goFlags = []string{"-trimpath", "-buildvcs=false", "-tags=grpcnotrace", "-ldflags=-s -w -buildid="}

// compile builds every image's binaries for every platform into
// dir/<os>-<arch>/, one `go build` per platform.
func compile(ctx context.Context, cfg *Config, dir string) error {
	var pkgs []string
	for _, img := range cfg.Images {
		for _, b := range img.Binaries {
			if !slices.Contains(pkgs, b.Package) {
				pkgs = append(pkgs, b.Package)
			}
		}
	}
	for _, p := range cfg.Platforms {
		out, err := filepath.Abs(filepath.Join(dir, platformDir(p)))
		if err != nil {
			return err
		}
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		args := append([]string{"build"}, goFlags...)
		args = append(args, "-o", out+string(filepath.Separator))
		args = append(args, pkgs...)
		cmd := exec.CommandContext(ctx, cfg.Go, args...)
		cmd.Dir = cfg.Dir
		// The micro-architecture levels are pinned too: a GOAMD64 set on
		// one machine would change the code, hence the digest.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture,
			"GOAMD64=v1", "GOARM64=v8.0")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		cfg.Log.Info("compiling", "platform", platformDir(p), "packages", len(pkgs))
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build for %s: %w", platformDir(p), err)
		}
	}
	return nil
}
