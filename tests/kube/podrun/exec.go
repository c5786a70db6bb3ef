package podrun

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// An exec'd process (pods/exec, kube.Config.ExecPod) is the test binary
// re-executed with execEnv holding a JSON execSpec, started inside the
// pod's network namespace: its init (below) chroots into the running
// container's root as the container's process sees it (/proc/<pid>/root:
// the overlay with the container's mounts, /etc/hosts and volumes
// included), takes the container's user and executes the command with
// the container's environment, as a runtime's exec does.
const execEnv = "PODRUN_EXEC_INIT"

type execSpec struct {
	// PID is the container's process, whose root is entered.
	PID int
	// Argv and Env of the process; Argv[0] is resolved in the container's
	// PATH when it has no slash.
	Argv, Env []string
	// Dir is the working directory; default /.
	Dir      string
	UID, GID int
	Groups   []int
}

func init() {
	spec := os.Getenv(execEnv)
	if spec == "" {
		return
	}
	runtime.LockOSThread()
	err := execInit(spec)
	fmt.Fprintf(os.Stderr, "podrun: exec: %v\n", err)
	os.Exit(126)
}

// execInit only returns on error.
func execInit(spec string) error {
	var s execSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		return err
	}
	if err := unix.Chroot("/proc/" + strconv.Itoa(s.PID) + "/root"); err != nil {
		return fmt.Errorf("entering the container's root: %w", err)
	}
	dir := s.Dir
	if dir == "" {
		dir = "/"
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("working directory %s: %w", dir, err)
	}
	argv0, err := lookPath(s.Argv[0], s.Env)
	if err != nil {
		return err
	}
	return execAs(argv0, s.Argv, s.Env, s.UID, s.GID, s.Groups)
}

// ExecPod is kube.Config.ExecPod: it runs cmd in the running container name of
// pod, with the container's file system, environment, user and network,
// its stdin, stdout and stderr connected to the streams, and returns when
// it exits: an *exec.ExitError for a non-zero exit (the harness reports
// its code to the client). No TTY.
func (r *Runner) ExecPod(ctx context.Context, obj *corev1.Pod, name string, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(cmd) == 0 {
		return fmt.Errorf("exec in %s/%s: no command", obj.Namespace, obj.Name)
	}
	r.mu.Lock()
	p := r.pods[obj.UID]
	r.mu.Unlock()
	if p == nil {
		return fmt.Errorf("exec in %s/%s: pod not running here", obj.Namespace, obj.Name)
	}
	p.mu.Lock()
	var c *container
	for _, cc := range p.ctrs {
		if cc.spec.Name == name {
			c = cc
		}
	}
	var pid int
	if c != nil && c.running && c.proc != nil {
		pid = c.proc.Pid
	}
	p.mu.Unlock()
	if pid == 0 {
		return fmt.Errorf("exec in %s/%s: container %q is not running", obj.Namespace, obj.Name, name)
	}
	is, err := p.initSpec(c)
	if err != nil {
		return fmt.Errorf("exec in %s/%s/%s: %w", obj.Namespace, obj.Name, name, err)
	}
	spec, err := json.Marshal(execSpec{PID: pid, Argv: cmd, Env: is.Env, Dir: is.Dir, UID: is.UID, GID: is.GID, Groups: is.Groups})
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	ec := exec.CommandContext(ctx, self)
	ec.Args = []string{"podrun-exec " + p.key.String() + "/" + name}
	ec.Env = []string{execEnv + "=" + string(spec)}
	ec.Dir = "/"
	ec.Stdin, ec.Stdout, ec.Stderr = stdin, stdout, stderr
	ec.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.sb.NS.Start(ec); err != nil {
		return fmt.Errorf("exec in %s/%s/%s: %w", obj.Namespace, obj.Name, name, err)
	}
	return ec.Wait()
}
