package kube

import (
	"os"
	"path/filepath"

	"github.com/ambient-go/mesh/istiod-lite/kubetest"
)

// Binaries are the executables the harness needs in the assets directory.
var Binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kubectl"}

// AssetsDir returns the directory holding the binaries built by
// `make kube-binaries` (see kubetest.AssetsDir).
func AssetsDir() (string, error) { return kubetest.AssetsDir() }

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
func RepoRoot() (string, error) { return kubetest.RepoRoot() }

// IstioAssetsDir returns the directory holding Istio's istiod
// (pilot-discovery) built by `make istio-binaries` (tools/istio/build.sh):
// $ISTIO_ASSETS, or the cache directory keyed by that recipe.
func IstioAssetsDir() (string, error) { return kubetest.ToolAssetsDir("ISTIO_ASSETS", "istio") }
