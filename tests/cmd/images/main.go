// Command images builds the mesh's container images (package
// github.com/ambient-go/mesh/tests/images): `make images`.
//
//	images -out _out/images -repository ambient-go -tag dev [-push] [-platforms linux/amd64,linux/arm64]
//
// With -push the indexes are sent to the registry named by -repository
// (e.g. -repository ghcr.io/org/mesh pushes ghcr.io/org/mesh/ztunnel:dev),
// with the credentials crane and docker use. SOURCE_DATE_EPOCH, if set, is
// the time of every file (default the Unix epoch).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ambient-go/mesh/tests/images"
)

func main() {
	var (
		cfg       images.Config
		platforms string
		push      bool
	)
	flag.StringVar(&cfg.Out, "out", "_out/images", "output directory")
	flag.StringVar(&cfg.Repository, "repository", "ambient-go", "registry and path the image names start with")
	flag.StringVar(&cfg.Tag, "tag", "dev", "tag of every image")
	flag.StringVar(&cfg.Go, "go", "go", "go command")
	flag.StringVar(&platforms, "platforms", "linux/amd64,linux/arm64", "comma-separated os/arch list")
	flag.BoolVar(&push, "push", false, "push the images to -repository")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(&cfg, platforms, push, log); err != nil {
		log.Error("images failed", "err", err)
		os.Exit(1)
	}
}

func run(cfg *images.Config, platforms string, push bool, log *slog.Logger) error {
	for _, p := range strings.Split(platforms, ",") {
		pl, err := v1.ParsePlatform(strings.TrimSpace(p))
		if err != nil {
			return fmt.Errorf("-platforms: %w", err)
		}
		cfg.Platforms = append(cfg.Platforms, *pl)
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
		}
		cfg.Epoch = time.Unix(sec, 0)
	}
	cfg.Log = log
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	built, err := images.Build(ctx, *cfg)
	if err != nil {
		return err
	}
	for _, b := range built {
		fmt.Printf("%s@%s\n", b.Ref, b.Digest)
	}
	if push {
		if err := images.Push(ctx, built); err != nil {
			return err
		}
		log.Info("pushed", "images", len(built), "repository", cfg.Repository)
	}
	return nil
}
