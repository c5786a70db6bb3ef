package kube

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambient-go/mesh/tests/images"
)

// kustomize renders dir with kubectl's built-in kustomize.
func kustomize(t *testing.T, dir string) []map[string]any {
	t.Helper()
	assets, err := AssetsDir()
	if err != nil || len(MissingBinaries(assets)) > 0 {
		skipOrFail(t, "kubectl not built (run make kube-binaries): %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(assets, "kubectl"), "kustomize", dir).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v", dir, err)
	}
	var docs []map[string]any
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatal(err)
		}
		docs = append(docs, m)
	}
	return docs
}

// podSpecs returns the pod template of every Deployment and DaemonSet.
func podSpecs(t *testing.T, docs []map[string]any) map[string]corev1.PodSpec {
	t.Helper()
	specs := map[string]corev1.PodSpec{}
	for _, d := range docs {
		b, _ := yaml.Marshal(d)
		switch d["kind"] {
		case "Deployment":
			var o appsv1.Deployment
			if err := yaml.Unmarshal(b, &o); err != nil {
				t.Fatal(err)
			}
			specs["Deployment/"+o.Name] = o.Spec.Template.Spec
		case "DaemonSet":
			var o appsv1.DaemonSet
			if err := yaml.Unmarshal(b, &o); err != nil {
				t.Fatal(err)
			}
			specs["DaemonSet/"+o.Name] = o.Spec.Template.Spec
		}
	}
	return specs
}

// TestDeployRunsOnTheImages checks deploy/ against the images `make
// images` builds (tests/images): every container names one of them, and
// runs a binary that image holds (its entrypoint, or a command naming one
// of its binaries; no shell: the images have none), and the user the
// container runs as is the image's non-root user unless the manifest asks
// for root explicitly.
func TestDeployRunsOnTheImages(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	byRef := map[string]images.Image{}
	for _, img := range images.Mesh() {
		byRef["ambient-go/"+img.Name+":dev"] = img
	}
	type run struct {
		Image, Binary string
		Root          bool
	}
	got := map[string]run{}
	for owner, spec := range podSpecs(t, kustomize(t, filepath.Join(root, "deploy"))) {
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			img, ok := byRef[c.Image]
			if !ok {
				t.Errorf("%s container %s: image %s is not one `make images` builds", owner, c.Name, c.Image)
				continue
			}
			bin := img.Entrypoint[0]
			if len(c.Command) > 0 {
				bin = c.Command[0]
			}
			var holds bool
			for _, b := range img.Binaries {
				holds = holds || images.BinDir+"/"+filepath.Base(b.Package) == bin
			}
			if !holds {
				t.Errorf("%s container %s runs %s, which image %s does not hold", owner, c.Name, bin, img.Name)
			}
			asRoot := c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil && *c.SecurityContext.RunAsUser == 0
			got[owner+"/"+c.Name] = run{Image: img.Name, Binary: bin, Root: asRoot}
		}
	}
	want := map[string]run{
		"Deployment/istiod-lite/discovery": {Image: "istiod-lite", Binary: "/usr/local/bin/istiod-lite"},
		"DaemonSet/ztunnel/install-cni":    {Image: "ztunnel", Binary: "/usr/local/bin/install-cni", Root: true},
		"DaemonSet/ztunnel/ztunnel":        {Image: "ztunnel", Binary: "/usr/local/bin/ztunnel", Root: true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("containers of deploy/ (-want +got):\n%s", diff)
	}
}

// TestDeployImagesSettable: an overlay's `images:` moves every container
// of deploy/ to another registry and tag (what a user who pushed with
// REGISTRY=... writes).
func TestDeployImagesSettable(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	overlay := t.TempDir()
	rel, err := filepath.Rel(overlay, filepath.Join(root, "deploy"))
	if err != nil {
		t.Fatal(err)
	}
	k := `resources: [` + rel + `]
images:
- {name: ambient-go/istiod-lite, newName: registry.test/mesh/istiod-lite, newTag: v1.2.3}
- {name: ambient-go/ztunnel, newName: registry.test/mesh/ztunnel, newTag: v1.2.3}
`
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for owner, spec := range podSpecs(t, kustomize(t, overlay)) {
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			got[owner+"/"+c.Name] = c.Image
		}
	}
	want := map[string]string{
		"Deployment/istiod-lite/discovery": "registry.test/mesh/istiod-lite:v1.2.3",
		"DaemonSet/ztunnel/install-cni":    "registry.test/mesh/ztunnel:v1.2.3",
		"DaemonSet/ztunnel/ztunnel":        "registry.test/mesh/ztunnel:v1.2.3",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("images after the overlay (-want +got):\n%s", diff)
	}
}
