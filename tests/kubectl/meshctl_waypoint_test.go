package kubectl

// meshctl waypoint against a real API server: istiod-lite in cluster mode
// deploys the waypoint Gateway meshctl applies, the harness kubelet runs
// its pod (waypointPods, without a process: the pod gets an address and is
// Ready), and istiod-lite's status writer reports it Programmed.

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ambient-go/mesh/tests/kube"
)

func TestMeshctlWaypoint(t *testing.T) {
	crds, err := kube.CRDDir()
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger(t)
	bin := buildMeshctl(t)
	pods := &waypointPods{stuck: map[string]bool{"stuck": true}, t: t, procs: map[string]*exec.Cmd{}}
	c := kube.Start(t, kube.Config{CRDDirs: []string{crds}, RunPod: pods.run, StopPod: pods.stop, Log: log.With("component", "harness")})
	c.MustKubectl(t, "create", "namespace", "istio-system")
	c.MustKubectl(t, "create", "namespace", "demo")
	c.MustKubectl(t, "label", "namespace", "demo", "istio.io/dataplane-mode=ambient")
	startIstiod(t, c, log)

	meshctl := func(t *testing.T, args ...string) (string, error) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), bin, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), &exitError{err, stderr.String()}
		}
		return string(out), nil
	}
	must := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := meshctl(t, args...)
		if err != nil {
			t.Fatalf("meshctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	programmed := func(t *testing.T, name string) string {
		t.Helper()
		return c.MustKubectl(t, "-n", "demo", "get", "gateway", name, "-o", `jsonpath={.status.conditions[?(@.type=="Programmed")].status}`)
	}

	t.Run("apply --enroll-namespace --wait prints progress and returns once Programmed", func(t *testing.T) {
		start := time.Now()
		out := must(t, "-n", "demo", "waypoint", "apply", "--enroll-namespace", "--wait", "--waypoint-timeout", "60s")
		// Read right after meshctl returned: it must not have returned
		// before the status writer said Programmed.
		if got := programmed(t, "waypoint"); got != "True" {
			t.Errorf("Programmed when apply --wait returned = %q, want True", got)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		progress := regexp.MustCompile(`^⏳ waypoint demo/waypoint: Programmed`)
		var waits int
		for _, l := range lines[1 : len(lines)-2] {
			if !progress.MatchString(l) {
				t.Errorf("line %q between applied and ready, want a progress line", l)
			}
			waits++
		}
		if len(lines) < 4 || lines[0] != "✅ waypoint demo/waypoint applied" || waits == 0 ||
			lines[len(lines)-2] != "✅ waypoint demo/waypoint is ready!" ||
			lines[len(lines)-1] != `✅ namespace demo labeled with "istio.io/use-waypoint: waypoint"` {
			t.Errorf("apply --enroll-namespace --wait =\n%s\nwant applied, progress lines, ready, namespace labeled", out)
		}
		if got := c.MustKubectl(t, "get", "namespace", "demo", "-o", `jsonpath={.metadata.labels.istio\.io/use-waypoint}`); got != "waypoint" {
			t.Errorf("namespace demo istio.io/use-waypoint = %q, want waypoint", got)
		}
		t.Logf("programmed after %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	})

	t.Run("the applied Gateway is generate's, owned by meshctl's field manager", func(t *testing.T) {
		got := c.MustKubectl(t, "-n", "demo", "get", "gateway", "waypoint", "-o",
			`jsonpath={.spec.gatewayClassName}|{range .spec.listeners[*]}{.name}/{.port}/{.protocol}{end}|{.metadata.managedFields[?(@.operation=="Apply")].manager}`)
		if got != "istio-waypoint|mesh/15008/HBONE|meshctl" {
			t.Errorf("Gateway demo/waypoint = %q, want istio-waypoint|mesh/15008/HBONE|meshctl", got)
		}
	})

	t.Run("status shows the conditions", func(t *testing.T) {
		out := must(t, "-n", "demo", "waypoint", "status")
		for _, re := range []string{
			`(?m)^NAME\s+STATUS\s+TYPE\s+REASON\s+MESSAGE$`,
			`(?m)^waypoint\s+True\s+Accepted\s+Accepted\s`,
			`(?m)^waypoint\s+True\s+Programmed\s+Programmed\s`,
		} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("waypoint status =\n%s\nwant a line matching %s", out, re)
			}
		}
	})

	t.Run("a per-identity waypoint: apply --service-account --wait, list shows it all", func(t *testing.T) {
		out := must(t, "-n", "demo", "waypoint", "apply", "--service-account", "reviews", "-w", "--waypoint-timeout", "60s")
		if !strings.Contains(out, "✅ waypoint demo/reviews-waypoint is ready!") {
			t.Errorf("apply --service-account reviews -w =\n%s\nwant reviews-waypoint ready", out)
		}
		if got := c.MustKubectl(t, "-n", "demo", "get", "gateway", "reviews-waypoint", "-o", `jsonpath={.metadata.annotations.istio\.io/for-service-account}`); got != "reviews" {
			t.Errorf("reviews-waypoint's istio.io/for-service-account = %q, want reviews", got)
		}
	})

	t.Run("list shows the effective traffic type and PROGRAMMED", func(t *testing.T) {
		want := "NAME             TRAFFIC TYPE SERVICE ACCOUNT PROGRAMMED\n" +
			"reviews-waypoint all          reviews         True\n" +
			"waypoint         service      -               True\n"
		if out := must(t, "-n", "demo", "waypoint", "list"); out != want {
			t.Errorf("waypoint list =\n%s\nwant\n%s", out, want)
		}
		out := must(t, "waypoint", "list", "-A", "-o", "json")
		if !strings.Contains(out, `"trafficType": "service"`) || !strings.Contains(out, `"namespace": "demo"`) {
			t.Errorf("waypoint list -A -o json =\n%s\nwant demo's waypoints", out)
		}
	})

	t.Run("--enroll-namespace leaves another waypoint's namespace alone without --overwrite", func(t *testing.T) {
		out := must(t, "-n", "demo", "waypoint", "apply", "--name", "other", "--enroll-namespace")
		if !strings.Contains(out, `namespace demo already uses waypoint "waypoint"`) {
			t.Errorf("apply --name other --enroll-namespace =\n%s\nwant a warning", out)
		}
		if _, err := c.Kubectl(t.Context(), "-n", "demo", "get", "gateway", "other"); err == nil {
			t.Error("Gateway demo/other was applied although the namespace was not enrolled")
		}
		out = must(t, "-n", "demo", "waypoint", "apply", "--name", "other", "--enroll-namespace", "--overwrite")
		if !strings.Contains(out, `✅ namespace demo labeled with "istio.io/use-waypoint: other"`) {
			t.Errorf("apply --overwrite =\n%s\nwant the namespace labeled", out)
		}
	})

	t.Run("a waypoint that never becomes ready times out", func(t *testing.T) {
		out, err := meshctl(t, "-n", "demo", "waypoint", "apply", "--name", "stuck", "--wait", "--waypoint-timeout", "3s")
		if err == nil || !strings.Contains(err.Error(), "timed out after 3s waiting for waypoint demo/stuck to be programmed: Programmed=False (AddressNotAssigned)") {
			t.Errorf("apply --name stuck --wait = %v\n%s\nwant a timeout naming the condition", err, out)
		}
	})

	t.Run("delete names and --all", func(t *testing.T) {
		out := must(t, "-n", "demo", "waypoint", "delete", "stuck", "missing")
		if out != "waypoint demo/stuck deleted\nwaypoint demo/missing not found\n" {
			t.Errorf("waypoint delete stuck missing =\n%s", out)
		}
		out = must(t, "-n", "demo", "waypoint", "delete", "--all")
		want := "waypoint demo/other deleted\nwaypoint demo/reviews-waypoint deleted\nwaypoint demo/waypoint deleted\n" +
			"⚠️ Warning: namespace demo still uses waypoint \"other\"; `kubectl label namespace demo istio.io/use-waypoint-` removes the label\n"
		if out != want {
			t.Errorf("waypoint delete --all =\n%s\nwant\n%s", out, want)
		}
		if out := must(t, "-n", "demo", "waypoint", "list"); out != "No waypoints found.\n" {
			t.Errorf("waypoint list after delete --all = %q", out)
		}
	})
}

// exitError is a failed meshctl run with its standard error.
type exitError struct {
	err    error
	stderr string
}

func (e *exitError) Error() string { return e.err.Error() + ": " + e.stderr }
