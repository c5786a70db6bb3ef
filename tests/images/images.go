// Package images builds the mesh's container images without a container
// daemon and without pulling a base image: static Go binaries
// (CGO_ENABLED=0, -trimpath, empty build id) cross-compiled for each
// platform, on a minimal base assembled here (/etc/passwd and /etc/group
// with the non-root user istio-proxy, and where an image needs them the CA
// certificates of Go's x509roots bundle), put together with
// github.com/google/go-containerregistry.
//
// The images are reproducible: every tar entry has a fixed time, owner and
// mode, entries are sorted, the configuration's timestamps are fixed and
// layers are compressed deterministically, so the same sources and
// toolchain give the same digests. Build writes, for each image, an OCI
// layout holding the multi-platform index (Out/oci/<name>) and, for each
// platform, a `docker save`-compatible tarball (Out/<os>-<arch>/<name>.tar)
// that `kind load image-archive` and `ctr images import` read; Push sends
// the indexes to a registry.
//
// Command tests/cmd/images (`make images`) wires it.
package images

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BinDir is where binaries go in an image.
const BinDir = "/usr/local/bin"

// User is the user every image runs as: istio-proxy, UID and GID 1337.
const User = "1337:1337"

// Binary is one Go command in an image.
type Binary struct {
	// Package is the import path of the main package. Required.
	Package string
	// Path is the file in the image; default BinDir/<last element of Package>.
	Path string
}

func (b Binary) path() string {
	return cmp.Or(b.Path, BinDir+"/"+b.name())
}

func (b Binary) name() string { return b.Package[strings.LastIndex(b.Package, "/")+1:] }

// Image describes one image.
type Image struct {
	// Name is the repository under Config.Repository, e.g. "ztunnel". Required.
	Name string
	// Binaries are the Go commands the image holds. Required.
	Binaries []Binary
	// Entrypoint of the image's configuration. Required.
	Entrypoint []string
	// CACerts adds public CA certificates as /etc/ssl/certs/ca-certificates.crt.
	CACerts bool
}

// Config configures Build. The zero value builds Mesh() for linux/amd64 and
// linux/arm64 as ambient-go/<name>:dev into _out/images.
type Config struct {
	// Dir is where `go build` runs (inside the Go workspace); default ".".
	Dir string
	// Out is the output directory; default "_out/images".
	Out string
	// Go is the go command; default "go".
	Go string
	// Platforms to build; default linux/amd64 and linux/arm64.
	Platforms []v1.Platform
	// Repository prefixes each image name: <Repository>/<name>:<Tag>, e.g.
	// "ghcr.io/org/mesh"; default "ambient-go".
	Repository string
	// Tag of every image; default "dev".
	Tag string
	// Epoch is the time of every file and of the configuration; default
	// the Unix epoch. SOURCE_DATE_EPOCH is read by the command, not here.
	Epoch time.Time
	// Images to build; default Mesh().
	Images []Image
	// Prebuilt, if set, is a directory holding <os>-<arch>/<binary name>
	// files used instead of running `go build` (tests).
	Prebuilt string
	// Log; default slog.Default().
	Log *slog.Logger
}

func (c *Config) defaults() error {
	c.Dir = cmp.Or(c.Dir, ".")
	c.Out = cmp.Or(c.Out, filepath.Join("_out", "images"))
	c.Go = cmp.Or(c.Go, "go")
	if len(c.Platforms) == 0 {
		c.Platforms = []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}
	}
	c.Repository = strings.TrimSuffix(cmp.Or(c.Repository, "ambient-go"), "/")
	c.Tag = cmp.Or(c.Tag, "dev")
	if c.Epoch.IsZero() {
		c.Epoch = time.Unix(0, 0)
	}
	c.Epoch = c.Epoch.UTC()
	if len(c.Images) == 0 {
		c.Images = Mesh()
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	c.Log = c.Log.With("component", "images")
	for _, img := range c.Images {
		if img.Name == "" || len(img.Binaries) == 0 || len(img.Entrypoint) == 0 {
			return fmt.Errorf("image %q: name, binaries and entrypoint are required", img.Name)
		}
		if _, err := name.NewTag(c.ref(img)); err != nil {
			return fmt.Errorf("image %q: %w", img.Name, err)
		}
	}
	return nil
}

func (c *Config) ref(img Image) string { return c.Repository + "/" + img.Name + ":" + c.Tag }

func platformDir(p v1.Platform) string { return p.OS + "-" + p.Architecture }

// Built is one built image.
type Built struct {
	// Ref is <Repository>/<name>:<Tag>.
	Ref name.Tag
	// Index is the multi-platform image index.
	Index v1.ImageIndex
	// Digest is Index's digest.
	Digest v1.Hash
	// Images by platform ("linux-amd64").
	Images map[string]v1.Image
}

// Build compiles the binaries, assembles the images and writes them to
// cfg.Out (see the package comment). Output of earlier runs for the same
// images is replaced.
func Build(ctx context.Context, cfg Config) ([]Built, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	bins := cfg.Prebuilt
	if bins == "" {
		bins = filepath.Join(cfg.Out, "bin")
		if err := compile(ctx, &cfg, bins); err != nil {
			return nil, err
		}
	}
	var built []Built
	for _, img := range cfg.Images {
		b, err := assemble(&cfg, img, bins)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", img.Name, err)
		}
		if err := write(&cfg, b); err != nil {
			return nil, fmt.Errorf("image %s: %w", img.Name, err)
		}
		cfg.Log.Info("image built", "ref", b.Ref.String(), "digest", b.Digest.String())
		built = append(built, b)
	}
	if err := writeDigests(&cfg, built); err != nil {
		return nil, err
	}
	return built, nil
}

// writeDigests records every image's and platform's digest in
// Out/digests.txt, one "<ref> <platform|index> <digest>" per line.
func writeDigests(cfg *Config, built []Built) error {
	var sb strings.Builder
	for _, b := range built {
		fmt.Fprintf(&sb, "%s index %s\n", b.Ref, b.Digest)
		for _, p := range cfg.Platforms {
			d, err := b.Images[platformDir(p)].Digest()
			if err != nil {
				return err
			}
			fmt.Fprintf(&sb, "%s %s %s\n", b.Ref, platformDir(p), d)
		}
	}
	if err := os.WriteFile(filepath.Join(cfg.Out, "digests.txt"), []byte(sb.String()), 0o644); err != nil {
		return fmt.Errorf("writing digests: %w", err)
	}
	return nil
}

var errNoBinary = errors.New("binary not built")
