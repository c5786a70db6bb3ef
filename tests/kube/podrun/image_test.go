package podrun

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ambient-go/mesh/tests/images"
)

// TestResolveAndUnpack builds a two-platform image with tests/images from
// a fake binary, finds it by tag and by digest, and unpacks it.
func TestResolveAndUnpack(t *testing.T) {
	bins := t.TempDir()
	plats := []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}
	for _, p := range plats {
		path := filepath.Join(bins, p.OS+"-"+p.Architecture, "tool")
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("tool for "+p.Architecture), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	built, err := images.Build(t.Context(), images.Config{
		Out: out, Prebuilt: bins, Platforms: plats, Repository: "example.test/mesh", Tag: "v1",
		Images: []images.Image{{Name: "tool", Binaries: []images.Binary{{Package: "example.test/tool"}}, Entrypoint: []string{images.BinDir + "/tool"}}},
		Log:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	arm, err := built[0].Images["linux-arm64"].Digest()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, ref string
		platform  v1.Platform
		want      v1.Hash // the platform manifest's digest
		wantErr   error
	}{
		{name: "tag", ref: "example.test/mesh/tool:v1", platform: plats[1], want: arm},
		{name: "index digest", ref: "example.test/mesh/tool@" + built[0].Digest.String(), platform: plats[1], want: arm},
		{name: "manifest digest", ref: "example.test/mesh/tool@" + arm.String(), platform: plats[0], want: arm},
		{name: "other tag", ref: "example.test/mesh/tool:v2", platform: plats[1], wantErr: errImageNotFound},
		{name: "other platform", ref: "example.test/mesh/tool:v1", platform: v1.Platform{OS: "linux", Architecture: "s390x"}, wantErr: errImageNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := resolve(out, tc.ref, tc.platform)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("resolve(%s) error = %v, want %v", tc.ref, err, tc.wantErr)
			}
			if err != nil {
				return
			}
			got, err := img.Digest()
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("resolve(%s) = %s, want %s", tc.ref, got, tc.want)
			}
		})
	}

	img, err := resolve(out, "example.test/mesh/tool:v1", plats[1])
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	dir, err := unpackCached(img, cache, arm)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "usr", "local", "bin", "tool"))
	if err != nil || string(b) != "tool for arm64" {
		t.Errorf("unpacked tool = %q, %v; want %q", b, err, "tool for arm64")
	}
	if fi, err := os.Stat(filepath.Join(dir, "usr", "local", "bin", "tool")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("unpacked tool mode = %v, %v; want 0755", fi.Mode(), err)
	}
	if _, err := os.Stat(filepath.Join(dir, "etc", "passwd")); err != nil {
		t.Errorf("the base layer's /etc/passwd is missing: %v", err)
	}
	// Once per digest: a second unpack finds it and writes nothing.
	if err := os.WriteFile(filepath.Join(dir, "marker"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	again, err := unpackCached(img, cache, arm)
	if err != nil || again != dir {
		t.Fatalf("second unpack = %s, %v; want %s", again, err, dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "marker")); err != nil {
		t.Errorf("the second unpack replaced the first: %v", err)
	}

	// A new unpack prunes what went unused for rootfsMaxAge, not what was
	// used since (the second unpack above marked dir as used).
	stale := filepath.Join(cache, strings.Repeat("0", 64))
	if err := os.MkdirAll(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, ".complete"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-rootfsMaxAge - time.Hour)
	if err := os.Chtimes(filepath.Join(stale, ".complete"), old, old); err != nil {
		t.Fatal(err)
	}
	amd, err := resolve(out, "example.test/mesh/tool:v1", plats[0])
	if err != nil {
		t.Fatal(err)
	}
	amdDigest, err := amd.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unpackCached(amd, cache, amdDigest); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("an unpacked image unused for longer than %v was kept (%v)", rootfsMaxAge, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "marker")); err != nil {
		t.Errorf("a recently used unpacked image was pruned: %v", err)
	}
}
