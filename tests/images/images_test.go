package images

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"debug/elf"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64 = v1.Platform{OS: "linux", Architecture: "arm64"}
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// hello is an image of testdata/hello, a program small enough to
// cross-compile in a test.
var hello = Image{
	Name:       "hello",
	Binaries:   []Binary{{Package: module + "/tests/images/testdata/hello"}},
	Entrypoint: []string{BinDir + "/hello"},
	CACerts:    true,
}

// treeHashes maps every file under dir to the SHA-256 of its contents.
func treeHashes(t *testing.T, dir string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		rel, _ := filepath.Rel(dir, p)
		got[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestBuildReproducible compiles testdata/hello for amd64 and arm64 twice,
// into two directories, and checks that the digests and every file written
// (binaries, OCI layouts, docker tarballs) are the same, and that the
// binaries are static executables for their platform.
func TestBuildReproducible(t *testing.T) {
	ctx := t.Context()
	var outs []string
	var digests []map[string]string
	for i := range 2 {
		out := filepath.Join(t.TempDir(), fmt.Sprint("build", i))
		built, err := Build(ctx, Config{Dir: "..", Out: out, Images: []Image{hello}, Log: discard()})
		if err != nil {
			t.Fatalf("Build #%d: %v", i, err)
		}
		d := map[string]string{"index": built[0].Digest.String()}
		for p, im := range built[0].Images {
			h, err := im.Digest()
			if err != nil {
				t.Fatal(err)
			}
			d[p] = h.String()
		}
		outs = append(outs, out)
		digests = append(digests, d)
	}
	if diff := cmp.Diff(digests[0], digests[1]); diff != "" {
		t.Errorf("digests of two builds differ (-first +second):\n%s", diff)
	}
	first, second := treeHashes(t, outs[0]), treeHashes(t, outs[1])
	if diff := cmp.Diff(first, second); diff != "" {
		t.Errorf("files of two builds differ (-first +second):\n%s", diff)
	}
	for _, want := range []string{"bin/linux-amd64/hello", "bin/linux-arm64/hello", "oci/hello/index.json", "oci/hello/oci-layout", "linux-amd64/hello.tar", "linux-arm64/hello.tar", "digests.txt"} {
		if _, ok := first[want]; !ok {
			t.Errorf("Build wrote no %s; wrote %v", want, first)
		}
	}

	for _, tc := range []struct {
		platform string
		machine  elf.Machine
	}{{"linux-amd64", elf.EM_X86_64}, {"linux-arm64", elf.EM_AARCH64}} {
		f, err := elf.Open(filepath.Join(outs[0], "bin", tc.platform, "hello"))
		if err != nil {
			t.Fatal(err)
		}
		if f.Machine != tc.machine {
			t.Errorf("hello for %s: machine = %v, want %v", tc.platform, f.Machine, tc.machine)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("hello for %s has a %v segment; want a static executable", tc.platform, p.Type)
			}
		}
		f.Close()
	}
}

// TestEpochChangesDigest checks that the fixed time is what goes into the
// image: another SOURCE_DATE_EPOCH gives another digest.
func TestEpochChangesDigest(t *testing.T) {
	bins := fakeBinaries(t, []Image{hello}, amd64)
	var got []v1.Hash
	for _, epoch := range []time.Time{{}, time.Unix(1700000000, 0)} {
		built, err := Build(t.Context(), Config{Out: t.TempDir(), Prebuilt: bins, Platforms: []v1.Platform{amd64}, Images: []Image{hello}, Epoch: epoch, Log: discard()})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, built[0].Digest)
	}
	if got[0] == got[1] {
		t.Errorf("digest with epoch 0 = digest with epoch 1700000000 = %v; want them to differ", got[0])
	}
}

// fakeBinaries writes a small file for every binary of imgs under
// <dir>/<os>-<arch>/ and returns dir (Config.Prebuilt).
func fakeBinaries(t *testing.T, imgs []Image, platforms ...v1.Platform) string {
	t.Helper()
	dir := t.TempDir()
	for _, p := range platforms {
		for _, img := range imgs {
			for _, b := range img.Binaries {
				path := filepath.Join(dir, platformDir(p), b.name())
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte("binary "+b.name()+" for "+platformDir(p)), 0o755); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return dir
}

// entry is one file of an image's flattened file system.
type entry struct {
	Mode     int64
	UID, GID int
}

// listFiles flattens im's layers and lists its entries.
func listFiles(t *testing.T, im v1.Image) (map[string]entry, map[string][]byte) {
	t.Helper()
	rc := mutate.Extract(im)
	defer rc.Close()
	files := map[string]entry{}
	contents := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = entry{Mode: h.Mode, UID: h.Uid, GID: h.Gid}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			contents[h.Name] = b
		}
	}
	return files, contents
}

// TestMeshImages lists the files and the configuration of each of the
// mesh's images: no shell or anything else but the binaries, the users
// and (istiod-lite, meshctl) the CA certificates, run as istio-proxy.
func TestMeshImages(t *testing.T) {
	var (
		dir  = entry{Mode: 0o755}
		conf = entry{Mode: 0o644}
		exe  = entry{Mode: 0o755}
	)
	base := map[string]entry{"etc": dir, "etc/passwd": conf, "etc/group": conf, "usr": dir, "usr/local": dir, "usr/local/bin": dir}
	withCerts := func(m map[string]entry) map[string]entry {
		m["etc/ssl"], m["etc/ssl/certs"], m["etc/ssl/certs/ca-certificates.crt"] = dir, dir, conf
		return m
	}
	plus := func(extra map[string]entry) map[string]entry {
		m := map[string]entry{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		image      string
		files      map[string]entry
		entrypoint []string
	}{
		{"istiod-lite", withCerts(plus(map[string]entry{"usr/local/bin/istiod-lite": exe})), []string{"/usr/local/bin/istiod-lite"}},
		{"ztunnel", plus(map[string]entry{"usr/local/bin/ztunnel": exe, "usr/local/bin/ztunnel-cni": exe, "usr/local/bin/install-cni": exe}), []string{"/usr/local/bin/ztunnel"}},
		{"waypoint", plus(map[string]entry{"usr/local/bin/waypoint": exe}), []string{"/usr/local/bin/waypoint"}},
		{"meshctl", withCerts(plus(map[string]entry{"usr/local/bin/meshctl": exe})), []string{"/usr/local/bin/meshctl"}},
	}
	bins := fakeBinaries(t, Mesh(), amd64, arm64)
	built, err := Build(t.Context(), Config{Out: t.TempDir(), Prebuilt: bins, Log: discard()})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Built{}
	for _, b := range built {
		byName[b.Ref.RepositoryStr()] = b
	}
	for _, tc := range tests {
		b, ok := byName["ambient-go/"+tc.image]
		if !ok {
			t.Fatalf("Build built no ambient-go/%s; built %v", tc.image, byName)
		}
		if got, want := b.Ref.String(), "ambient-go/"+tc.image+":dev"; got != want {
			t.Errorf("ref = %s, want %s", got, want)
		}
		for _, p := range []v1.Platform{amd64, arm64} {
			t.Run(tc.image+"/"+platformDir(p), func(t *testing.T) {
				im := b.Images[platformDir(p)]
				files, contents := listFiles(t, im)
				if diff := cmp.Diff(tc.files, files); diff != "" {
					t.Errorf("files (-want +got):\n%s", diff)
				}
				for path, e := range files {
					if strings.HasSuffix(path, "/sh") || strings.HasPrefix(path, "bin/") {
						t.Errorf("image holds %s (%+v); want no shell", path, e)
					}
				}
				bin := tc.entrypoint[0][1:]
				if got, want := string(contents[bin]), "binary "+filepath.Base(bin)+" for "+platformDir(p); got != want {
					t.Errorf("%s holds %q, want the %s binary %q", bin, got, platformDir(p), want)
				}
				if got, want := string(contents["etc/passwd"]), "istio-proxy:x:1337:1337:"; !strings.Contains(got, want) {
					t.Errorf("etc/passwd = %q, want a line starting %q", got, want)
				}
				if pemData, ok := contents["etc/ssl/certs/ca-certificates.crt"]; ok {
					if n := countCerts(t, pemData); n < 100 {
						t.Errorf("ca-certificates.crt holds %d certificates, want the Mozilla roots (>100)", n)
					}
				}

				cf, err := im.ConfigFile()
				if err != nil {
					t.Fatal(err)
				}
				gotCfg := struct {
					OS, Arch, User, WorkingDir string
					Entrypoint, Cmd, Env       []string
					Created                    time.Time
				}{cf.OS, cf.Architecture, cf.Config.User, cf.Config.WorkingDir, cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.Env, cf.Created.UTC()}
				wantCfg := gotCfg
				wantCfg.OS, wantCfg.Arch, wantCfg.User, wantCfg.WorkingDir = p.OS, p.Architecture, "1337:1337", "/"
				wantCfg.Entrypoint, wantCfg.Cmd, wantCfg.Env = tc.entrypoint, nil, []string{"PATH=/usr/local/bin"}
				wantCfg.Created = time.Unix(0, 0).UTC()
				if diff := cmp.Diff(wantCfg, gotCfg); diff != "" {
					t.Errorf("config (-want +got):\n%s", diff)
				}
				mt, err := im.MediaType()
				if err != nil || mt != "application/vnd.oci.image.manifest.v1+json" {
					t.Errorf("media type = %q, %v; want the OCI manifest", mt, err)
				}
			})
		}
	}
}

func countCerts(t *testing.T, data []byte) int {
	t.Helper()
	n := 0
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			return n
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			t.Errorf("certificate %d: %v", n, err)
		}
		n++
	}
}

// TestOutputsRead reads back what Build wrote the way the tools that
// consume it do: the OCI layout's index (with the names containerd's
// import uses) and each platform's docker tarball (docker load, kind load
// image-archive): same digests as built.
func TestOutputsRead(t *testing.T) {
	out := t.TempDir()
	bins := fakeBinaries(t, []Image{hello}, amd64, arm64)
	built, err := Build(t.Context(), Config{Out: out, Prebuilt: bins, Images: []Image{hello}, Log: discard()})
	if err != nil {
		t.Fatal(err)
	}
	b := built[0]

	p, err := layout.FromPath(LayoutDir(out, b))
	if err != nil {
		t.Fatal(err)
	}
	root, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	rm, err := root.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(rm.Manifests) != 1 {
		t.Fatalf("index.json lists %d manifests, want 1", len(rm.Manifests))
	}
	wantAnn := map[string]string{"io.containerd.image.name": "docker.io/ambient-go/hello:dev", "org.opencontainers.image.ref.name": "dev"}
	if diff := cmp.Diff(wantAnn, rm.Manifests[0].Annotations); diff != "" {
		t.Errorf("index.json annotations (-want +got):\n%s", diff)
	}
	if rm.Manifests[0].Digest != b.Digest {
		t.Errorf("index.json points at %v, want the built index %v", rm.Manifests[0].Digest, b.Digest)
	}
	idx, err := root.ImageIndex(b.Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var gotPlatforms []string
	for _, m := range im.Manifests {
		gotPlatforms = append(gotPlatforms, m.Platform.String())
	}
	if diff := cmp.Diff([]string{"linux/amd64", "linux/arm64"}, gotPlatforms); diff != "" {
		t.Errorf("index platforms (-want +got):\n%s", diff)
	}

	for _, pl := range []string{"linux-amd64", "linux-arm64"} {
		tag, _ := name.NewTag("ambient-go/hello:dev")
		img, err := tarball.ImageFromPath(TarballPath(out, pl, b), &tag)
		if err != nil {
			t.Fatalf("docker tarball for %s: %v", pl, err)
		}
		// A docker tarball has no manifest of its own (docker load makes a
		// Docker-typed one), so what must match is the image ID (the
		// config's digest) and the layers.
		gotID, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		wantID, _ := b.Images[pl].ConfigName()
		if gotID != wantID {
			t.Errorf("docker tarball for %s: image ID %v, want %v", pl, gotID, wantID)
		}
		if diff := cmp.Diff(layerDigests(t, b.Images[pl]), layerDigests(t, img)); diff != "" {
			t.Errorf("docker tarball for %s: layers (-want +got):\n%s", pl, diff)
		}
		m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(TarballPath(out, pl, b)) })
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"ambient-go/hello:dev"}, m[0].RepoTags); len(m) != 1 || diff != "" {
			t.Errorf("manifest.json RepoTags (-want +got):\n%s", diff)
		}
	}
}

// TestPushPull pushes to go-containerregistry's registry on loopback and
// pulls back: the same index and, for each platform, the same image.
func TestPushPull(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()

	repo := ln.Addr().String() + "/mesh"
	bins := fakeBinaries(t, []Image{hello}, amd64, arm64)
	built, err := Build(t.Context(), Config{Out: t.TempDir(), Prebuilt: bins, Images: []Image{hello}, Repository: repo, Tag: "v1", Log: discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := Push(ctx, built, remote.WithTransport(tr)); err != nil {
		t.Fatal(err)
	}

	ref, err := name.NewTag(repo + "/hello:v1")
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(ref, remote.WithContext(ctx), remote.WithTransport(tr))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := idx.Digest(); got != built[0].Digest {
		t.Errorf("pulled index %v, want %v", got, built[0].Digest)
	}
	for _, p := range []v1.Platform{amd64, arm64} {
		img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithTransport(tr), remote.WithPlatform(p))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := img.Digest()
		want, _ := built[0].Images[platformDir(p)].Digest()
		if got != want {
			t.Errorf("pulled %s image %v, want %v", platformDir(p), got, want)
		}
		gotFiles, gotData := listFiles(t, img)
		wantFiles, wantData := listFiles(t, built[0].Images[platformDir(p)])
		if diff := cmp.Diff(wantFiles, gotFiles); diff != "" {
			t.Errorf("pulled %s files (-want +got):\n%s", platformDir(p), diff)
		}
		if diff := cmp.Diff(wantData, gotData); diff != "" {
			t.Errorf("pulled %s contents (-want +got):\n%s", platformDir(p), diff)
		}
	}
}

func layerDigests(t *testing.T, im v1.Image) []string {
	t.Helper()
	ls, err := im.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		diffID, err := l.DiffID()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d.String()+" "+diffID.String())
	}
	return out
}

// TestConformanceEchoImage checks the echo image's files: the binary as
// the entrypoint echo and again as client (the suite execs `client`).
func TestConformanceEchoImage(t *testing.T) {
	img := ConformanceEcho()
	bins := fakeBinaries(t, []Image{img}, amd64)
	built, err := Build(t.Context(), Config{Out: t.TempDir(), Prebuilt: bins, Platforms: []v1.Platform{amd64}, Images: []Image{img}, Log: discard()})
	if err != nil {
		t.Fatal(err)
	}
	files, contents := listFiles(t, built[0].Images["linux-amd64"])
	for _, bin := range []string{"usr/local/bin/echo", "usr/local/bin/client"} {
		if got, want := files[bin], (entry{Mode: 0o755}); got != want {
			t.Errorf("%s: %+v, want %+v", bin, got, want)
		}
		if got, want := string(contents[bin]), "binary echo for linux-amd64"; got != want {
			t.Errorf("%s holds %q, want %q", bin, got, want)
		}
	}
	cf, err := built[0].Images["linux-amd64"].ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/usr/local/bin/echo"}, cf.Config.Entrypoint); diff != "" {
		t.Errorf("entrypoint (-want +got):\n%s", diff)
	}
	if got := built[0].Ref.String(); got != "ambient-go/conformance-echo:dev" {
		t.Errorf("ref = %s, want ambient-go/conformance-echo:dev", got)
	}
}
