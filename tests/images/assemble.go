package images

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// assemble makes img's index from the binaries in bins/<os>-<arch>/.
func assemble(cfg *Config, img Image, bins string) (Built, error) {
	ref, err := name.NewTag(cfg.ref(img))
	if err != nil {
		return Built{}, err
	}
	b := Built{Ref: ref, Images: map[string]v1.Image{}}
	var adds []mutate.IndexAddendum
	for _, p := range cfg.Platforms {
		im, err := platformImage(cfg, img, p, filepath.Join(bins, platformDir(p)))
		if err != nil {
			return Built{}, fmt.Errorf("%s: %w", platformDir(p), err)
		}
		b.Images[platformDir(p)] = im
		adds = append(adds, mutate.IndexAddendum{Add: im, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}}})
	}
	b.Index = mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	if b.Digest, err = b.Index.Digest(); err != nil {
		return Built{}, err
	}
	return b, nil
}

// platformImage is img for one platform: the base layer, then a layer with
// the binaries.
func platformImage(cfg *Config, img Image, p v1.Platform, bins string) (v1.Image, error) {
	base, err := layer(baseFiles(img.CACerts), cfg.Epoch)
	if err != nil {
		return nil, fmt.Errorf("base layer: %w", err)
	}
	var files []file
	for _, bin := range img.Binaries {
		data, err := os.ReadFile(filepath.Join(bins, bin.name()))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errNoBinary, err)
		}
		files = append(files, file{path: bin.path(), mode: 0o755, data: data})
	}
	app, err := layer(files, cfg.Epoch)
	if err != nil {
		return nil, fmt.Errorf("binaries layer: %w", err)
	}

	im := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	cf, err := im.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	created := v1.Time{Time: cfg.Epoch}
	cf.Created = created
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Config = v1.Config{
		Entrypoint: img.Entrypoint,
		User:       User,
		WorkingDir: "/",
		Env:        []string{"PATH=" + BinDir},
		Labels: map[string]string{
			"org.opencontainers.image.source": "https://" + module,
			"org.opencontainers.image.title":  img.Name,
		},
	}
	if im, err = mutate.ConfigFile(im, cf); err != nil {
		return nil, err
	}
	return mutate.Append(im,
		mutate.Addendum{Layer: base, History: v1.History{Created: created, CreatedBy: "images: base (users" + map[bool]string{true: ", CA certificates", false: ""}[img.CACerts] + ")"}},
		mutate.Addendum{Layer: app, History: v1.History{Created: created, CreatedBy: "images: binaries"}},
	)
}
