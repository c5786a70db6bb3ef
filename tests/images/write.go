package images

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// LayoutDir is where b's OCI layout goes under out.
func LayoutDir(out string, b Built) string {
	return filepath.Join(out, "oci", lastElem(b.Ref.RepositoryStr()))
}

// TarballPath is where b's `docker save` tarball for platform ("linux-amd64")
// goes under out.
func TarballPath(out, platform string, b Built) string {
	return filepath.Join(out, platform, lastElem(b.Ref.RepositoryStr())+".tar")
}

func lastElem(repo string) string { return filepath.Base(repo) }

// write puts b into cfg.Out: an OCI layout with the index, annotated with
// its name for containerd (io.containerd.image.name) and its tag
// (org.opencontainers.image.ref.name), and one docker tarball per
// platform (a docker tarball holds one platform per tag).
func write(cfg *Config, b Built) error {
	dir := LayoutDir(cfg.Out, b)
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("oci layout: %w", err)
	}
	if err := p.AppendIndex(b.Index, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          containerdName(b.Ref),
		"org.opencontainers.image.ref.name": b.Ref.TagStr(),
	})); err != nil {
		return fmt.Errorf("oci layout: %w", err)
	}
	for _, pl := range cfg.Platforms {
		path := TarballPath(cfg.Out, platformDir(pl), b)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := tarball.WriteToFile(path, b.Ref, b.Images[platformDir(pl)]); err != nil {
			return fmt.Errorf("docker tarball: %w", err)
		}
	}
	return nil
}

// containerdName is ref as containerd normalises it: Docker Hub is
// docker.io, not index.docker.io.
func containerdName(ref name.Tag) string {
	reg := ref.RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	return reg + "/" + ref.RepositoryStr() + ":" + ref.TagStr()
}
