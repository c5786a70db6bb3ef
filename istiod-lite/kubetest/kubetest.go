// Package kubetest starts a real Kubernetes API server (etcd and
// kube-apiserver through controller-runtime's envtest, with the
// repository's CRDs) for the package tests of istiod-lite, and finds the
// binaries of `make kube-binaries` for the tests/kube harness too. It is the
// small sibling of that harness: no controller manager, no nodes, no
// kubelet; for those, and for kubectl, use tests/kube. Only tests import it.
//
// The binaries are those of `make kube-binaries` (tools/kube/build.sh):
// $KUBE_ASSETS, or the build script's cache directory. Start skips the test
// when they are missing, and fails it instead when CI=true.
package kubetest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Start starts etcd and kube-apiserver with the CRDs of crds/ installed and
// returns an admin client configuration. t.Cleanup stops them.
func Start(t testing.TB) *rest.Config {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	assets, err := AssetsDir()
	if err != nil {
		skipOrFail(t, "kube binaries: %v", err)
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if fi, err := os.Stat(filepath.Join(assets, b)); err != nil || fi.Mode()&0o111 == 0 {
			skipOrFail(t, "kube binary %s missing in %s: run `make kube-binaries`", b, assets)
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		CRDDirectoryPaths:        []string{filepath.Join(root, "crds")},
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: 60 * time.Second,
		ControlPlaneStopTimeout:  20 * time.Second,
	}
	cfg, err := env.Start()
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})
	if err != nil {
		t.Fatalf("starting etcd and kube-apiserver: %v", err)
	}
	return cfg
}

func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true, so not skipping: "+format, args...)
	}
	t.Skipf(format, args...)
}

// AssetsDir returns the directory holding the binaries built by
// `make kube-binaries`: $KUBE_ASSETS when set (the Makefile sets it),
// otherwise the cache directory tools/kube/build.sh builds into (see
// ToolAssetsDir).
func AssetsDir() (string, error) { return ToolAssetsDir("KUBE_ASSETS", "kube") }

// ToolAssetsDir returns the directory tools/<tool>/build.sh builds into:
// $env when set, otherwise
// ${XDG_CACHE_HOME:-$HOME/.cache}/ambient-go/<tool>/<hash>/bin, where hash
// is the first 16 hex digits of sha256(go.mod + go.sum + build.sh) of
// tools/<tool>, as build.sh computes it.
func ToolAssetsDir(env, tool string) (string, error) {
	if d := os.Getenv(env); d != "" {
		return d, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "tools", tool)
	files := []string{"go.mod", "go.sum", "build.sh"}
	// And the Go files of tools/<tool>/cmd, sorted by path (build.sh: find
	// cmd -name '*.go' | LC_ALL=C sort).
	var cmds []string
	filepath.WalkDir(filepath.Join(dir, "cmd"), func(path string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() && strings.HasSuffix(path, ".go") {
			rel, _ := filepath.Rel(dir, path)
			cmds = append(cmds, rel)
		}
		return nil
	})
	slices.Sort(cmds)
	h := sha256.New()
	for _, f := range append(files, cmds...) {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return "", fmt.Errorf("hashing the %s build recipe: %w", tool, err)
		}
		h.Write(b)
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("locating the %s binaries cache: %w", tool, err)
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "ambient-go", tool, hex.EncodeToString(h.Sum(nil))[:16], "bin"), nil
}

// RepoRoot returns the root of the repository: the nearest parent of the
// working directory holding tools/kube/build.sh.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "tools", "kube", "build.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (tools/kube/build.sh) not found above the working directory")
		}
		dir = parent
	}
}
