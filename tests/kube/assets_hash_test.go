package kube

import (
	"os/exec"
	"strings"
	"testing"
)

// TestAssetsDirsMatchBuildScripts: the directories the tests look in are
// the ones tools/<tool>/build.sh builds into (the same hash of the
// recipe), so a changed recipe is rebuilt and found.
func TestAssetsDirsMatchBuildScripts(t *testing.T) {
	t.Setenv("KUBE_ASSETS", "")
	t.Setenv("ISTIO_ASSETS", "")
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		tool string
		dir  func() (string, error)
	}{
		{"kube", AssetsDir},
		{"istio", IstioAssetsDir},
	} {
		out, err := exec.Command(root+"/tools/"+tc.tool+"/build.sh", "-print").Output()
		if err != nil {
			t.Fatalf("%s/build.sh -print: %v", tc.tool, err)
		}
		got, err := tc.dir()
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.TrimSpace(string(out)); got != want {
			t.Errorf("%s assets directory = %s, build.sh builds into %s", tc.tool, got, want)
		}
	}
}
