package podrun

import (
	"archive/tar"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/ambient-go/mesh/tests/images"
	"github.com/ambient-go/mesh/tests/kube"
)

// Platform is the platform whose images the Runner runs: this machine's.
var Platform = v1.Platform{OS: "linux", Architecture: runtime.GOARCH}

// CacheDir returns the repository's git-ignored cache directory for
// podrun (.cache/podrun).
func CacheDir() (string, error) {
	root, err := kube.RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".cache", "podrun"), nil
}

var (
	buildOnce  sync.Once
	buildDir   string
	buildBuilt []images.Built
	buildErr   error
)

// BuildImages builds the mesh's images that pods run (images.Mesh but
// meshctl: istiod-lite, ztunnel, waypoint) for Platform, as `make images`
// does, into CacheDir()/images, once per process, and returns
// that directory and the images. `go build` is incremental, and an
// unchanged binary gives the same digest, hence no new unpacking.
func BuildImages(ctx context.Context, log *slog.Logger) (string, []images.Built, error) {
	buildOnce.Do(func() {
		cache, err := CacheDir()
		if err != nil {
			buildErr = err
			return
		}
		root := filepath.Dir(filepath.Dir(cache))
		dir := filepath.Join(cache, "images")
		unlock, err := lockDir(cache)
		if err != nil {
			buildErr = err
			return
		}
		defer unlock()
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		var imgs []images.Image
		for _, img := range images.Mesh() {
			if img.Name != "meshctl" { // a CLI: no pod runs it
				imgs = append(imgs, img)
			}
		}
		buildBuilt, buildErr = images.Build(ctx, images.Config{
			Dir: root, Out: dir, Platforms: []v1.Platform{Platform}, Images: imgs, Log: log,
		})
		buildDir = dir
	})
	return buildDir, buildBuilt, buildErr
}

// lockDir takes an exclusive lock on dir/.lock (other test processes
// building or unpacking wait) and returns its release.
func lockDir(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// image is an image resolved for Platform and unpacked.
type image struct {
	ref    string
	digest v1.Hash // the platform manifest's
	config v1.Config
	rootfs string
}

type imageStore struct {
	dirs    []string
	aliases map[string]string // Config.ImageAliases
	cache   string
	log     *slog.Logger

	mu       sync.Mutex
	unpacked map[string]*unpackOnce // by manifest digest
}

type unpackOnce struct {
	once sync.Once
	dir  string
	err  error
}

// get resolves ref in the layouts and unpacks its file system.
func (s *imageStore) get(ctx context.Context, ref string) (*image, error) {
	dirs := s.dirs
	if len(dirs) == 0 {
		dir, _, err := BuildImages(ctx, s.log)
		if err != nil {
			return nil, fmt.Errorf("building images: %w", err)
		}
		dirs = []string{dir}
	}
	var img v1.Image
	var err error
	for _, dir := range dirs {
		if img, err = resolve(dir, cmp.Or(s.aliases[ref], ref), Platform); !errors.Is(err, errImageNotFound) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", ref, err)
	}
	cache := s.cache
	if cache == "" {
		c, err := CacheDir()
		if err != nil {
			return nil, err
		}
		cache = filepath.Join(c, "rootfs")
	}
	s.mu.Lock()
	u := s.unpacked[digest.String()]
	if u == nil {
		u = &unpackOnce{}
		s.unpacked[digest.String()] = u
	}
	s.mu.Unlock()
	u.once.Do(func() { u.dir, u.err = unpackCached(img, cache, digest) })
	if u.err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, u.err)
	}
	return &image{ref: ref, digest: digest, config: cf.Config, rootfs: u.dir}, nil
}

// resolve finds ref in the OCI layouts under dir/oci: by tag (the layout's
// io.containerd.image.name annotation) or by digest (of an index, or of a
// platform manifest; the repository part of the reference is not
// checked: a digest names one image), and returns the image for platform.
func resolve(dir, ref string, platform v1.Platform) (v1.Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	layouts, err := filepath.Glob(filepath.Join(dir, "oci", "*"))
	if err != nil {
		return nil, err
	}
	for _, l := range layouts {
		p, err := layout.FromPath(l)
		if err != nil {
			continue
		}
		root, err := p.ImageIndex()
		if err != nil {
			continue
		}
		im, err := root.IndexManifest()
		if err != nil {
			continue
		}
		for _, d := range im.Manifests {
			switch r := r.(type) {
			case name.Tag:
				if d.Annotations["io.containerd.image.name"] != containerdName(r) {
					continue
				}
				return platformImage(root, d, platform)
			case name.Digest:
				if d.Digest.String() == r.DigestStr() {
					return platformImage(root, d, platform)
				}
				if d.MediaType.IsIndex() {
					idx, err := root.ImageIndex(d.Digest)
					if err != nil {
						return nil, err
					}
					sub, err := idx.IndexManifest()
					if err != nil {
						return nil, err
					}
					for _, m := range sub.Manifests {
						if m.Digest.String() == r.DigestStr() {
							return idx.Image(m.Digest)
						}
					}
				}
			}
		}
	}
	return nil, fmt.Errorf("image %s: not in the OCI layouts under %s: %w", ref, dir, errImageNotFound)
}

var errImageNotFound = errors.New("image not found")

// containerdName is ref as containerd names it (docker.io, not
// index.docker.io), as tests/images annotates its layouts.
func containerdName(ref name.Tag) string {
	reg := ref.RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	return reg + "/" + ref.RepositoryStr() + ":" + ref.TagStr()
}

// platformImage returns d's image for platform (d an index or an image).
func platformImage(root v1.ImageIndex, d v1.Descriptor, platform v1.Platform) (v1.Image, error) {
	if !d.MediaType.IsIndex() {
		return root.Image(d.Digest)
	}
	idx, err := root.ImageIndex(d.Digest)
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, m := range im.Manifests {
		if m.Platform != nil && m.Platform.Satisfies(platform) {
			return idx.Image(m.Digest)
		}
	}
	return nil, fmt.Errorf("no image for %s in index %s: %w", platform, d.Digest, errImageNotFound)
}

// unpackCached unpacks img into cache/<digest hex> unless it is there.
func unpackCached(img v1.Image, cache string, digest v1.Hash) (string, error) {
	dst := filepath.Join(cache, digest.Hex)
	if _, err := os.Stat(filepath.Join(dst, ".complete")); err == nil {
		now := time.Now()
		os.Chtimes(filepath.Join(dst, ".complete"), now, now) // last use, for pruneRootfs
		return dst, nil
	}
	unlock, err := lockDir(cache)
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(dst, ".complete")); err == nil {
		return dst, nil
	}
	if err := os.RemoveAll(dst); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(cache, "."+digest.Hex[:12]+"-")
	if err != nil {
		return "", err
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	if err := untar(rc, tmp); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("unpacking %s: %w", digest, err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	// Every build of the images has new digests: without pruning, a
	// developer's cache grows by the images' size at each change.
	pruneRootfs(cache, rootfsMaxAge)
	return dst, nil
}

// rootfsMaxAge is how long an unpacked image may go unused before
// pruneRootfs removes it.
const rootfsMaxAge = 24 * time.Hour

// pruneRootfs removes the unpacked images under cache last used (their
// .complete marker's time) more than maxAge ago. The cache's lock is held.
func pruneRootfs(cache string, maxAge time.Duration) {
	entries, err := os.ReadDir(cache)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		fi, err := os.Stat(filepath.Join(cache, e.Name(), ".complete"))
		if err == nil && time.Since(fi.ModTime()) > maxAge {
			os.RemoveAll(filepath.Join(cache, e.Name()))
		}
	}
}

// untar writes a flattened image file system into dir, with the modes of
// its entries and, as root, their owners. Entries leaving dir are
// refused.
func untar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		rel := filepath.Clean(strings.TrimPrefix(h.Name, "/"))
		if rel == "." {
			continue
		}
		if !filepath.IsLocal(rel) {
			return fmt.Errorf("entry %q leaves the file system", h.Name)
		}
		path := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(h.Mode) & os.ModePerm
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(path, mode); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, path); err != nil {
				return err
			}
		case tar.TypeLink:
			target := filepath.Clean(strings.TrimPrefix(h.Linkname, "/"))
			if !filepath.IsLocal(target) {
				return fmt.Errorf("hard link %q leaves the file system", h.Name)
			}
			if err := os.Link(filepath.Join(dir, target), path); err != nil {
				return err
			}
		default:
			return fmt.Errorf("entry %q: type %q is not supported", h.Name, strconv.Itoa(int(h.Typeflag)))
		}
		if os.Geteuid() == 0 {
			if err := os.Lchown(path, h.Uid, h.Gid); err != nil {
				return err
			}
		}
		if h.Typeflag == tar.TypeDir || h.Typeflag == tar.TypeReg {
			if err := os.Chmod(path, mode); err != nil {
				return err
			}
		}
	}
}
