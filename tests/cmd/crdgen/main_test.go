package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestCRDsUpToDate regenerates the CRDs and compares them with the
// committed crds/, so a dependency bump without `make crds`, or a hand edit,
// fails.
func TestCRDsUpToDate(t *testing.T) {
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := run(out, filepath.Join(root, "istiod-lite")); err != nil {
		t.Fatal(err)
	}
	want := readDir(t, out)
	got := readDir(t, filepath.Join(root, "crds"))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("crds/ is not what `make crds` generates; run make crds (-want +got):\n%.2000s", diff)
	}
}

func readDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m[filepath.Base(f)] = string(b)
	}
	return m
}
