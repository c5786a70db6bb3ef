package podrun_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/ambient-go/mesh/tests/kube"
	"github.com/ambient-go/mesh/tests/kube/podrun"
	"github.com/ambient-go/mesh/tests/netns"
)

// execPod runs the test image with a user, an environment variable and
// an emptyDir the container writes to.
const execPod = `
apiVersion: v1
kind: Pod
metadata: {name: target, namespace: default}
spec:
  nodeName: node-1
  serviceAccountName: default
  securityContext: {runAsUser: 4242, runAsGroup: 4343}
  containers:
  - name: app
    image: ambient-go/app:test
    env:
    - {name: GREETING, value: hello}
    - {name: REPORT_FILES, value: /etc/hosts}
    - {name: WRITE_DIR, value: /scratch}
    volumeMounts: [{name: scratch, mountPath: /scratch}]
    readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
  volumes: [{name: scratch, emptyDir: {}}]
`

// TestExecPod runs `kubectl exec` through the API server, the harness
// kubelet's cri-streaming server and Runner.ExecPod: the command runs in
// the running container's file system (its /etc/hosts and volumes), with
// the container's environment and user, in the pod's network (the
// container's port 8080 is taken), its stdout comes back, and its exit
// code is kubectl's; a command missing from the image fails.
func TestExecPod(t *testing.T) {
	netns.RequireRoot(t)
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go command to build the test image")
	}
	imgs := buildAppImage(t)
	topo := netns.New(t, netns.Options{Nodes: 1})
	d := &deployed{topo: topo, pods: map[types.UID]*netns.Pod{}}
	runner, err := podrun.New(podrun.Config{Images: []string{imgs}, Cache: t.TempDir(), Network: d.sandbox})
	if err != nil {
		t.Fatal(err)
	}
	d.runner = runner
	t.Cleanup(func() { runner.Close() })
	kc := kube.Start(t, kube.Config{
		Nodes:   []kube.Node{{Name: "node-1", IP: netns.NodeIP(1)}},
		RunPod:  runner.RunPod,
		StopPod: runner.StopPod,
		ExecPod: runner.ExecPod,
	})
	t.Cleanup(func() { runner.Close() })
	runner.Attach(kc)
	if err := kc.WaitForServiceAccount(t.Context(), "default", "default"); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.KubectlStdin(t.Context(), strings.NewReader(execPod), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	kc.MustKubectl(t, "wait", "--for=condition=Ready", "pod/target", "--timeout=60s")

	kubectlExec := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		return kc.Kubectl(ctx, append([]string{"exec", "target", "-c", "app", "--"}, args...)...)
	}

	// The image's program reports what it sees, then fails to listen on
	// 8080, which the container serves in the same network: exit 2.
	out, err := kubectlExec("app")
	if err == nil || !strings.Contains(err.Error(), "exit status 2") {
		t.Errorf("exec app: err %v, want exit status 2 (port 8080 taken in the pod's network)", err)
	}
	var rep report
	if line, ok := strings.CutPrefix(strings.SplitN(out, "\n", 2)[0], "REPORT "); !ok {
		t.Fatalf("exec app printed %q, want a REPORT line", out)
	} else if err := json.Unmarshal([]byte(line), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.UID != 4242 || rep.GID != 4343 {
		t.Errorf("exec ran as %d:%d, want the container's 4242:4343", rep.UID, rep.GID)
	}
	if rep.Env["GREETING"] != "hello" || rep.Env["HOSTNAME"] != "target" {
		t.Errorf("exec environment GREETING=%q HOSTNAME=%q, want the container's hello and target", rep.Env["GREETING"], rep.Env["HOSTNAME"])
	}
	if hosts := rep.Files["/etc/hosts"]; !strings.Contains(hosts, "\ttarget\n") {
		t.Errorf("exec's /etc/hosts = %q, want the pod's (naming target)", hosts)
	}
	if !rep.WriteDir {
		t.Errorf("exec could not write the container's emptyDir /scratch")
	}

	out, err = kubectlExec("/usr/local/bin/app", "exit", "3")
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(out, "exiting 3") {
		t.Errorf("exec app exit 3 = %q, %v; want its output and exit status 3", out, err)
	}
	if out, err := kubectlExec("app", "exit", "0"); err != nil || !strings.Contains(out, "exiting 0") {
		t.Errorf("exec app exit 0 = %q, %v; want its output and success", out, err)
	}
	if _, err := kubectlExec("no-such-command"); err == nil {
		t.Errorf("exec no-such-command succeeded, want a failure")
	}
}
