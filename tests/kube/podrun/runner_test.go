package podrun_test

import (
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambient-go/mesh/tests/images"
	"github.com/ambient-go/mesh/tests/kube"
	"github.com/ambient-go/mesh/tests/kube/podrun"
	"github.com/ambient-go/mesh/tests/netns"
)

// appSource is the program of the test image: it reports what it sees
// (argv, environment, working directory, user, the files REPORT_FILES
// names, whether it can write WRITE_DIR and the root), then serves HTTP
// on :8080 until SIGTERM, and exits 0. "exit N" exits N at once.
const appSource = `package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "exit" {
		n, _ := strconv.Atoi(os.Args[2])
		fmt.Println("exiting", n)
		os.Exit(n)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	rep := map[string]any{"argv": os.Args, "uid": os.Getuid(), "gid": os.Getgid()}
	wd, _ := os.Getwd()
	rep["cwd"] = wd
	env := map[string]string{}
	for _, e := range os.Environ() {
		k, v, _ := strings.Cut(e, "=")
		env[k] = v
	}
	rep["env"] = env
	files := map[string]string{}
	for _, f := range strings.Fields(os.Getenv("REPORT_FILES")) {
		b, err := os.ReadFile(f)
		if err != nil {
			files[f] = "error"
		} else {
			files[f] = string(b)
		}
	}
	rep["files"] = files
	rep["writeDir"] = os.WriteFile(os.Getenv("WRITE_DIR")+"/w", []byte("x"), 0o644) == nil
	rep["writeRoot"] = os.WriteFile("/w", []byte("x"), 0o644) == nil
	b, _ := json.Marshal(rep)
	fmt.Println("REPORT " + string(b))
	ln, err := net.Listen("tcp", ":8080")
	if err != nil {
		fmt.Println(err)
		os.Exit(2)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	<-sig
	fmt.Println("terminated")
	os.Exit(0)
}
`

// buildAppImage compiles appSource statically and makes an image of it
// with tests/images (as ambient-go/app:test, entrypoint
// [/usr/local/bin/app from-entrypoint]); it returns the images directory.
func buildAppImage(t *testing.T) string {
	t.Helper()
	return buildGoImage(t, "app", appSource, "from-entrypoint")
}

// buildGoImage compiles source, one main package of the standard library
// only, statically and makes an image of it with tests/images, as
// ambient-go/<name>:test with entrypoint [/usr/local/bin/<name> args...];
// it returns the images directory.
func buildGoImage(t *testing.T, name, source string, args ...string) string {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(source), 0o644); err != nil {
		t.Fatal(err)
	}
	bins := t.TempDir()
	plat := podrun.Platform.OS + "-" + podrun.Platform.Architecture
	build := exec.Command("go", "build", "-o", filepath.Join(bins, plat, name), "main.go")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GO111MODULE=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", name, err, out)
	}
	out := t.TempDir()
	_, err := images.Build(t.Context(), images.Config{
		Out: out, Tag: "test", Prebuilt: bins, Platforms: []v1.Platform{podrun.Platform},
		Images: []images.Image{{
			Name:       name,
			Binaries:   []images.Binary{{Package: "example.test/" + name}},
			Entrypoint: append([]string{images.BinDir + "/" + name}, args...),
		}},
		Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

const runnerObjects = `
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: default}
data: {greeting: hello, file.txt: from-configmap}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: default}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: default, labels: {app: app}}
spec:
  nodeName: node-1
  serviceAccountName: default # no ServiceAccount admission plugin defaults it
  terminationGracePeriodSeconds: 5
  securityContext: {runAsUser: 4242, runAsGroup: 4343, runAsNonRoot: true}
  containers:
  - name: app
    image: ambient-go/app:test
    args: ["$(GREETING)", "$(MISSING)", "$$(GREETING)"]
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: settings, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: SA, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}
    - {name: COMPOSED, value: "$(POD_NAME)-$(GREETING)"}
    - {name: WRITE_DIR, value: /scratch}
    - name: REPORT_FILES
      value: >-
        /etc/settings/file.txt /etc/creds/password /var/run/secrets/tokens/token
        /host/marker /var/run/secrets/kubernetes.io/serviceaccount/namespace
    readinessProbe:
      httpGet: {path: /ready, port: http}
      periodSeconds: 1
    ports: [{name: http, containerPort: 8080}]
    securityContext: {readOnlyRootFilesystem: true}
    volumeMounts:
    - {name: settings, mountPath: /etc/settings}
    - {name: creds, mountPath: /etc/creds, readOnly: true}
    - {name: token, mountPath: /var/run/secrets/tokens}
    - {name: scratch, mountPath: /scratch}
    - {name: host, mountPath: /host}
  volumes:
  - {name: settings, configMap: {name: settings}}
  - {name: creds, secret: {secretName: creds}}
  - name: token
    projected: {sources: [{serviceAccountToken: {path: token, audience: test-aud, expirationSeconds: 600}}]}
  - {name: scratch, emptyDir: {}}
  - {name: host, hostPath: {path: /srv/podrun, type: Directory}}
---
apiVersion: v1
kind: Pod
metadata: {name: crasher, namespace: default}
spec:
  nodeName: node-1
  serviceAccountName: default
  containers:
  - name: app
    image: ambient-go/app:test
    command: [/usr/local/bin/app, exit, "3"]
`

// latePod needs a ConfigMap the test creates later.
const latePod = `
apiVersion: v1
kind: Pod
metadata: {name: late, namespace: default}
spec:
  nodeName: node-1
  serviceAccountName: default
  containers:
  - name: app
    image: ambient-go/app:test
    env: [{name: K, valueFrom: {configMapKeyRef: {name: late, key: k}}}]
`

// report is what the test app printed.
type report struct {
	Argv      []string          `json:"argv"`
	UID       int               `json:"uid"`
	GID       int               `json:"gid"`
	Cwd       string            `json:"cwd"`
	Env       map[string]string `json:"env"`
	Files     map[string]string `json:"files"`
	WriteDir  bool              `json:"writeDir"`
	WriteRoot bool              `json:"writeRoot"`
}

// TestRunnerRunsPods runs the test image's pods through the harness
// kubelet and checks what the process saw (command and args over the
// image's entrypoint, environment with downward API, ConfigMap and Secret
// references, volumes, user, read-only root, working directory), that the
// readiness probe made the pod Ready, that a crashing container is
// restarted with its exit recorded, that a container waiting for a
// ConfigMap is retried without counting restarts and starts once it
// exists, and that deleting a pod ends its process with SIGTERM.
func TestRunnerRunsPods(t *testing.T) {
	netns.RequireRoot(t)
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go command to build the test image")
	}
	imgs := buildAppImage(t)
	topo := netns.New(t, netns.Options{Nodes: 1})
	reports := make(chan report, 4)
	d := &deployed{topo: topo, pods: map[types.UID]*netns.Pod{}}
	runner, err := podrun.New(podrun.Config{
		Images:  []string{imgs},
		Cache:   t.TempDir(),
		Network: d.sandbox,
		BackOff: 200 * time.Millisecond,
		Output: func(pod types.NamespacedName, ctr string, line []byte) {
			if s, ok := strings.CutPrefix(string(line), "REPORT "); ok && pod.Name == "app" {
				var r report
				if err := json.Unmarshal([]byte(s), &r); err == nil {
					reports <- r
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.runner = runner
	t.Cleanup(func() { runner.Close() })
	kc := kube.Start(t, kube.Config{
		Nodes:   []kube.Node{{Name: "node-1", IP: netns.NodeIP(1)}},
		RunPod:  runner.RunPod,
		StopPod: runner.StopPod,
	})
	t.Cleanup(func() { runner.Close() })
	runner.Attach(kc)
	if err := kc.WaitForServiceAccount(t.Context(), "default", "default"); err != nil {
		t.Fatal(err)
	}
	hostDir := filepath.Join(runner.NodeDir("node-1"), "srv", "podrun")
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hostDir, "marker"), []byte("node-1's"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.KubectlStdin(t.Context(), strings.NewReader(runnerObjects), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}

	var got report
	select {
	case got = <-reports:
	case <-time.After(time.Minute):
		t.Fatalf("the app pod reported nothing within a minute; its output:\n%s", runner.Logs("default", "app", "app"))
	}
	kc.MustKubectl(t, "wait", "--for=condition=Ready", "pod/app", "--timeout=30s")
	pod, err := kc.Clientset.CoreV1().Pods("default").Get(t.Context(), "app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("the process saw the pod spec", func(t *testing.T) {
		token := got.Files["/var/run/secrets/tokens/token"]
		got.Files["/var/run/secrets/tokens/token"] = "<token>"
		want := report{
			Argv: []string{"/usr/local/bin/app", "from-entrypoint", "hello", "$(MISSING)", "$(GREETING)"},
			UID:  4242, GID: 4343, Cwd: "/",
			Files: map[string]string{
				"/etc/settings/file.txt":        "from-configmap",
				"/etc/creds/password":           "s3cret",
				"/var/run/secrets/tokens/token": "<token>",
				"/host/marker":                  "node-1's",
				"/var/run/secrets/kubernetes.io/serviceaccount/namespace": "default",
			},
			WriteDir: true, WriteRoot: false,
		}
		env := got.Env
		got.Env = nil
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("the app's report (-want +got):\n%s", diff)
		}
		wantEnv := map[string]string{
			"GREETING": "hello", "PASSWORD": "s3cret", "POD_NAME": "app", "POD_NAMESPACE": "default",
			"NODE_NAME": "node-1", "POD_IP": pod.Status.PodIP, "SA": "default", "COMPOSED": "app-hello",
			"HOSTNAME": "app", "KUBERNETES_SERVICE_HOST": "127.0.0.1", "PATH": images.BinDir,
		}
		for k, v := range wantEnv {
			if env[k] != v {
				t.Errorf("env %s = %q, want %q", k, env[k], v)
			}
		}
		if aud := jwtAudience(t, token); !cmp.Equal(aud, []string{"test-aud"}) {
			t.Errorf("projected token audience = %v, want [test-aud]", aud)
		}
	})

	t.Run("the crashing container restarts and its exits are recorded", func(t *testing.T) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			p, err := kc.Clientset.CoreV1().Pods("default").Get(t.Context(), "crasher", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if cs := p.Status.ContainerStatuses; len(cs) == 1 && cs[0].RestartCount >= 2 &&
				cs[0].LastTerminationState.Terminated != nil && cs[0].LastTerminationState.Terminated.ExitCode == 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("crasher status after 30s: %+v", p.Status.ContainerStatuses)
			}
			time.Sleep(100 * time.Millisecond)
		}
		var exits int
		for _, e := range runner.Exits() {
			if e.Pod.Name == "crasher" && e.Code == 3 && !e.Stopped {
				exits++
			}
		}
		if exits < 2 {
			t.Errorf("%d exits with code 3 recorded for the crasher, want at least 2: %+v", exits, runner.Exits())
		}
	})

	t.Run("a variable from a ConfigMap key not there yet: waits without restarts, then starts", func(t *testing.T) {
		if _, err := kc.KubectlStdin(t.Context(), strings.NewReader(latePod), "apply", "-f", "-"); err != nil {
			t.Fatal(err)
		}
		// Several retries (BackOff 200ms) pass while the key is missing.
		deadline := time.Now().Add(30 * time.Second)
		for {
			p, err := kc.Clientset.CoreV1().Pods("default").Get(t.Context(), "late", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cs := p.Status.ContainerStatuses
			if len(cs) == 1 && cs[0].State.Waiting != nil && cs[0].State.Waiting.Reason == "CreateContainerConfigError" {
				if cs[0].RestartCount != 0 {
					t.Errorf("restartCount = %d while the container never started, want 0", cs[0].RestartCount)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("late pod status after 30s: %+v", cs)
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(time.Second)
		kc.MustKubectl(t, "create", "configmap", "late", "--from-literal=k=v")
		kc.MustKubectl(t, "wait", "--for=condition=Ready", "pod/late", "--timeout=30s")
		p, err := kc.Clientset.CoreV1().Pods("default").Get(t.Context(), "late", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if cs := p.Status.ContainerStatuses; len(cs) != 1 || cs[0].RestartCount != 0 || cs[0].State.Running == nil {
			t.Errorf("late pod's container after the ConfigMap appeared: %+v; want running, 0 restarts", cs)
		}
	})

	t.Run("deleting the pod ends its process with SIGTERM", func(t *testing.T) {
		kc.MustKubectl(t, "delete", "pod", "app", "--timeout=30s")
		var found []podrun.Exit
		for _, e := range runner.Exits() {
			if e.Pod.Name == "app" {
				found = append(found, e)
			}
		}
		want := []podrun.Exit{{Pod: types.NamespacedName{Namespace: "default", Name: "app"}, Container: "app", Code: 0, Stopped: true}}
		if diff := cmp.Diff(want, found); diff != "" {
			t.Errorf("the app's exits (-want +got):\n%s", diff)
		}
	})
}

// jwtAudience decodes a JWT's aud claim (no verification: the API server
// issued it).
func jwtAudience(t *testing.T, token string) []string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q is not a JWT", token)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		Aud []string `json:"aud"`
	}
	if err := json.Unmarshal(b, &claims); err != nil {
		t.Fatal(err)
	}
	return claims.Aud
}
