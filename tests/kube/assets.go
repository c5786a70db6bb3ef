package kube

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Binaries are the executables the harness needs in the assets directory.
var Binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kubectl"}

// AssetsDir returns the directory holding the binaries built by
// `make kube-binaries`: $KUBE_ASSETS when set (the Makefile sets it),
// otherwise the cache directory tools/kube/build.sh builds into,
// ${XDG_CACHE_HOME:-$HOME/.cache}/ambient-go/kube/<hash>/bin, where hash is
// the first 16 hex digits of sha256(go.mod + go.sum + build.sh).
func AssetsDir() (string, error) {
	if d := os.Getenv("KUBE_ASSETS"); d != "" {
		return d, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum", "build.sh"} {
		b, err := os.ReadFile(filepath.Join(root, "tools", "kube", f))
		if err != nil {
			return "", fmt.Errorf("hashing the kube build recipe: %w", err)
		}
		h.Write(b)
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("locating the kube binaries cache: %w", err)
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "ambient-go", "kube", hex.EncodeToString(h.Sum(nil))[:16], "bin"), nil
}

// MissingBinaries returns the names of the Binaries not executable in dir.
func MissingBinaries(dir string) []string {
	var missing []string
	for _, b := range Binaries {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, b)
		}
	}
	return missing
}

// RepoRoot returns the root of the repository: the nearest parent of the
// working directory holding tools/kube/build.sh.
func RepoRoot() (string, error) { return repoRoot() }

func repoRoot() (string, error) {
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
