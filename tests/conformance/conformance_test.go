// Package conformance runs the Gateway API conformance suite
// (sigs.k8s.io/gateway-api/conformance, the version of our gateway-api
// module), unmodified, with its MESH-HTTP and MESH-GRPC profiles, against
// the mesh installed from deploy/ on the tests/kube harness: istiod-lite,
// a ztunnel on each of two nodes, and a waypoint in each of the suite's
// mesh namespaces, which are labelled istio.io/dataplane-mode=ambient and
// istio.io/use-waypoint=waypoint (as Istio's ambient conformance run
// does). The suite's echo pods run tests/cmd/echo (image
// ambient-go/conformance-echo, which the harness kubelet resolves the
// suite's registry.k8s.io/gateway-api/echo-advanced to); the suite execs
// `client` in them through pods/exec.
//
// `make conformance` runs both profiles (CONFORMANCE=full) and writes the
// suite's report to docs/conformance/; otherwise (`make test`) only
// MeshBasic runs, which proves the rig: echo pods in the mesh, pods/exec,
// a request through ztunnel and the waypoint. Environment:
//
//	CONFORMANCE=full                 run the profiles and write the report
//	CONFORMANCE_RUN_TEST=<ShortName> run one test (no report written)
//	CONFORMANCE_REPORT=path          where the report goes (default docs/conformance/ambient-go-mesh-report.yaml)
//
// It needs root and the kube binaries (make kube-binaries); it skips
// without them.
package conformance

import (
	"context"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/gateway-api/apis/v1alpha2"
	"sigs.k8s.io/gateway-api/apis/v1alpha3"
	"sigs.k8s.io/gateway-api/apis/v1beta1"
	gwconformance "sigs.k8s.io/gateway-api/conformance"
	confv1 "sigs.k8s.io/gateway-api/conformance/apis/v1"
	"sigs.k8s.io/gateway-api/conformance/tests"
	"sigs.k8s.io/gateway-api/conformance/utils/config"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"
	"sigs.k8s.io/yaml"

	"github.com/ambient-go/mesh/tests/images"
	"github.com/ambient-go/mesh/tests/kube"
	"github.com/ambient-go/mesh/tests/kube/podrun"
	"github.com/ambient-go/mesh/tests/netns"
)

// suiteEchoImage is the image the suite's mesh manifests run.
const suiteEchoImage = "registry.k8s.io/gateway-api/echo-advanced:v1.5.1"

// meshNamespaces are the suite's mesh namespaces (its mesh/manifests.yaml).
var meshNamespaces = []string{suite.MeshNamespace, suite.MeshConsumerNamespace}

// skipped are the tests not run, each with why (docs/conformance/README.md
// lists them too). None is: MeshConsumerRoute, which Istio's ambient run
// skips, passes since the waypoint tells a consumer route's clients apart
// by their HBONE identity.
var skipped = map[string]string{}

// meshFeatures are the features we claim beyond the profiles' core ones:
// every mesh extended feature, and the HTTPRoute features the mesh tests
// use.
func meshFeatures() []features.FeatureName {
	fs := features.SetsToNamesSet(features.MeshExtendedFeatures)
	fs.Insert(
		features.SupportHTTPRouteResponseHeaderModification,
		features.SupportHTTPRoute303RedirectStatusCode,
		features.SupportHTTPRoute307RedirectStatusCode,
		features.SupportHTTPRoute308RedirectStatusCode,
		features.SupportHTTPRouteParentRefPort,
	)
	return sets.List(fs)
}

// waypoint is the waypoint Gateway of each mesh namespace.
const waypoint = `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: NS}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`

// lines keeps the containers' last lines for a failure report.
type lines struct {
	mu sync.Mutex
	l  []string
}

func (o *lines) add(pod types.NamespacedName, ctr string, line []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.l = append(o.l, pod.String()+"/"+ctr+": "+string(line))
	if len(o.l) > 2000 {
		o.l = o.l[len(o.l)-1000:]
	}
}

func (o *lines) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Join(o.l[max(0, len(o.l)-400):], "\n")
}

// TestMeshConformance is the suite's run (see the package comment).
func TestMeshConformance(t *testing.T) {
	netns.RequireRoot(t)
	root, err := kube.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	echoDir := buildEcho(t, root)
	out := &lines{}
	m := podrun.StartMesh(t, podrun.MeshConfig{
		Images:       []string{echoDir},
		ImageAliases: map[string]string{suiteEchoImage: "ambient-go/" + images.ConformanceEcho().Name + ":dev"},
		// The suite's clients call Services by name: cluster DNS answers
		// with the ClusterIP, which ztunnel captures. Pods out of the
		// mesh (the waypoints) have nothing to answer there: they keep
		// the harness's names by endpoint.
		ServiceRoutes: true,
		ServiceVIPs: func(pod *corev1.Pod) bool {
			return slices.Contains(meshNamespaces, pod.Namespace) && pod.Labels["istio.io/dataplane-mode"] != "none"
		},
		Output:        out.add,
		FailureReport: out.String,
	})
	m.Rollout(t)
	kc := m.Cluster
	ctx := t.Context()

	labels := map[string]string{"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"}
	for _, ns := range meshNamespaces {
		obj := &corev1.Namespace{}
		obj.Name, obj.Labels = ns, labels
		if _, err := kc.Clientset.CoreV1().Namespaces().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kc.KubectlStdin(ctx, strings.NewReader(strings.ReplaceAll(waypoint, "NS", ns)), "apply", "-f", "-"); err != nil {
			t.Fatalf("applying the waypoint of %s: %v", ns, err)
		}
	}
	for _, ns := range meshNamespaces {
		c, cancel := context.WithTimeout(ctx, 3*time.Minute)
		_, err := kc.Kubectl(c, "-n", ns, "wait", "--for=condition=Programmed", "gateway/waypoint", "--timeout=170s")
		cancel()
		if err != nil {
			t.Fatalf("the waypoint of %s is not Programmed: %v", ns, err)
		}
	}

	log.SetLogger(logr.Discard())
	// The suite's client gets a scheme of its own: client-go's global one
	// is read by the harness's informers while this adds to it.
	sch := runtime.NewScheme()
	for _, install := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, gatewayv1.Install, v1beta1.Install, v1alpha2.Install, v1alpha3.Install, apiextensionsv1.AddToScheme} {
		if err := install(sch); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.New(kc.REST, client.Options{Scheme: sch})
	if err != nil {
		t.Fatal(err)
	}
	opts := suite.ConformanceOptions{
		ConfigurableOptions: suite.ConfigurableOptions{
			Mode:                 "ambient",
			NamespaceLabels:      labels,
			CleanupBaseResources: false,
			CleanupTestResources: true,
			SupportedFeatures:    meshFeatures(),
			RunTest:              runTest(t),
			ConformanceProfiles:  []suite.ConformanceProfileName{suite.MeshHTTPConformanceProfileName, suite.MeshGRPCConformanceProfileName},
			Implementation: confv1.Implementation{
				Organization: "ambient-go",
				Project:      "mesh",
				URL:          "https://github.com/ambient-go/mesh",
				Version:      "dev",
				Contact:      []string{"https://github.com/ambient-go/mesh/issues"},
			},
			TimeoutConfig: timeouts(),
		},
		Client:     c,
		Clientset:  kc.Clientset,
		RestConfig: kc.REST,
		ManifestFS: []fs.FS{&gwconformance.Manifests},
	}
	// A skipped test named by CONFORMANCE_RUN_TEST runs: asked for.
	for name := range maps.Keys(skipped) {
		if name != opts.RunTest {
			opts.SkipTests = append(opts.SkipTests, name)
		}
	}
	slices.Sort(opts.SkipTests)
	cs, err := suite.NewConformanceTestSuite(opts)
	if err != nil {
		t.Fatalf("creating the suite: %v", err)
	}
	if opts.RunTest == "" {
		report := os.Getenv("CONFORMANCE_REPORT")
		if report == "" {
			report = filepath.Join(root, "docs", "conformance", "ambient-go-mesh-report.yaml")
		}
		t.Cleanup(func() { writeReport(t, cs, report) })
	}
	cs.Setup(t, tests.ConformanceTests)
	if err := cs.Run(t, tests.ConformanceTests); err != nil {
		t.Fatal(err)
	}
}

// runTest is the one test to run: CONFORMANCE_RUN_TEST, else none (all)
// with CONFORMANCE=full, else MeshBasic.
func runTest(t *testing.T) string {
	if rt := os.Getenv("CONFORMANCE_RUN_TEST"); rt != "" {
		return rt
	}
	if os.Getenv("CONFORMANCE") == "full" {
		return ""
	}
	t.Log("running MeshBasic only; CONFORMANCE=full (make conformance) runs the MESH-HTTP and MESH-GRPC profiles")
	return "MeshBasic"
}

// timeouts are the suite's defaults, with more time for a namespace's pods
// to be ready (images unpacked, sandboxes made, one node's CPU).
func timeouts() config.TimeoutConfig {
	tc := config.DefaultTimeoutConfig()
	tc.NamespacesMustBeReady = 5 * time.Minute
	return tc
}

// buildEcho builds the echo image for this machine into the podrun cache
// and returns its directory.
func buildEcho(t *testing.T, root string) string {
	t.Helper()
	cache, err := podrun.CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(cache, "conformance-images")
	start := time.Now()
	if _, err := images.Build(t.Context(), images.Config{
		Dir: root, Out: dir, Platforms: []v1.Platform{podrun.Platform},
		Images: []images.Image{images.ConformanceEcho()}, Log: slog.New(slog.DiscardHandler),
	}); err != nil {
		t.Fatalf("building the echo image: %v", err)
	}
	t.Logf("echo image built in %v", time.Since(start).Round(time.Millisecond))
	return dir
}

// writeReport writes the suite's report as YAML to path.
func writeReport(t *testing.T, cs *suite.ConformanceTestSuite, path string) {
	r, err := cs.Report()
	if err != nil {
		t.Errorf("the suite's report: %v", err)
		return
	}
	// The date changes every run; keep the file stable but for results.
	r.Date = ""
	b, err := yaml.Marshal(r)
	if err != nil {
		t.Errorf("marshalling the report: %v", err)
		return
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Error(err)
		return
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Error(err)
		return
	}
	t.Logf("report written to %s", path)
}
