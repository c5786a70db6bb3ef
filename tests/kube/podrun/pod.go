package podrun

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambient-go/mesh/tests/kube"
)

// maxBackOff caps the restart back-off, and resetBackOff is how long a
// container must run for its back-off to start over (the kubelet's).
const (
	maxBackOff   = 5 * time.Minute
	resetBackOff = 10 * time.Minute
)

// A sandbox that could not be created is retried after sandboxBackOff,
// doubling up to maxSandboxBackOff, at most maxSandboxAttempts times (about
// two hours).
const (
	sandboxBackOff     = time.Second
	maxSandboxBackOff  = 10 * time.Second
	maxSandboxAttempts = 720
)

type containerKind int

const (
	kindInit    containerKind = iota // runs to completion before the next
	kindSidecar                      // an init container with restartPolicy Always
	kindMain
)

// pod is a running pod.
type pod struct {
	r   *Runner
	kc  *kube.Cluster
	obj *corev1.Pod
	key types.NamespacedName
	log *slog.Logger
	dir string
	sb  Sandbox
	fwd *forwarder

	// Set by prepare, read-only after.
	volumes map[string]string
	tokens  []*token

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	notify  chan struct{}
	created chan struct{} // closed when startPod is done with the sandbox

	mu          sync.Mutex
	sandboxErr  error // the last failed sandbox attempt's, nil once made
	ctrs        []*container
	mainStarted bool
	hostsText   string
}

// container is one container of a pod; its fields after spec are guarded
// by the pod's mu.
type container struct {
	p     *pod
	spec  corev1.Container
	kind  containerKind
	out   *kube.TailBuffer
	image *image

	proc       *os.Process
	running    bool
	startedAt  time.Time
	ready      bool
	restarts   int32
	waiting    *corev1.ContainerStateWaiting
	last       *corev1.ContainerStateTerminated
	terminated *corev1.ContainerStateTerminated
}

func allContainers(pod *corev1.Pod) []corev1.Container {
	return append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...)
}

// newPod returns the pod's containers, waiting to be created; its sandbox
// comes from createSandbox.
func (r *Runner) newPod(kc *kube.Cluster, obj *corev1.Pod) *pod {
	p := &pod{
		r: r, kc: kc, obj: obj,
		key:     types.NamespacedName{Namespace: obj.Namespace, Name: obj.Name},
		notify:  make(chan struct{}, 1),
		created: make(chan struct{}),
	}
	p.log = r.log.With("pod", p.key.String(), "node", obj.Spec.NodeName)
	p.ctx, p.cancel = context.WithCancel(r.ctx)
	for _, c := range obj.Spec.InitContainers {
		kind := kindInit
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			kind = kindSidecar
		}
		p.ctrs = append(p.ctrs, &container{p: p, spec: c, kind: kind, out: kube.NewTailBuffer(256 << 10)})
	}
	for _, c := range obj.Spec.Containers {
		p.ctrs = append(p.ctrs, &container{p: p, spec: c, kind: kindMain, out: kube.NewTailBuffer(256 << 10)})
	}
	for _, c := range p.ctrs {
		c.waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
	}
	return p
}

// createSandbox makes the pod's sandbox (makeSandbox) as a kubelet does:
// a failed attempt (the network plugin's ADD failing, say) is recorded as
// a FailedCreatePodSandBox event of the pod and in its status (Pending,
// PodReadyToStartContainers False with the error), and retried after
// sandboxBackOff, doubling up to maxSandboxBackOff, until the pod stops
// (deleted, or the Runner closed) or maxSandboxAttempts failed.
func (p *pod) createSandbox() error {
	backOff := sandboxBackOff
	for attempt := 1; ; attempt++ {
		err := p.makeSandbox(p.ctx)
		if err == nil || p.ctx.Err() != nil {
			return err
		}
		p.r.recorder(p.obj.Spec.NodeName).Eventf(p.obj, corev1.EventTypeWarning, "FailedCreatePodSandBox", "Failed to create pod sandbox: %v", err)
		p.mu.Lock()
		p.sandboxErr = err
		p.mu.Unlock()
		sctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		if serr := p.writeStatus(sctx); serr != nil && p.ctx.Err() == nil {
			p.log.Warn("writing pod status failed", "err", serr)
		}
		cancel()
		if attempt == maxSandboxAttempts {
			return fmt.Errorf("pod %s: no sandbox after %d attempts: %w", p.key, attempt, err)
		}
		p.log.Warn("creating the pod sandbox failed; retrying", "attempt", attempt, "retry_in", backOff, "err", err)
		if !p.sleep(backOff) {
			return p.ctx.Err()
		}
		backOff = min(2*backOff, maxSandboxBackOff)
	}
}

// makeSandbox creates the pod's directory, sandbox, API server forwarder
// and hosts files, and publishes its IPs; it releases what it made when
// it fails.
func (p *pod) makeSandbox(ctx context.Context) error {
	r, kc, obj := p.r, p.kc, p.obj
	dir, err := os.MkdirTemp(r.cfg.Dir, "pod-"+obj.Namespace+"-"+obj.Name+"-")
	if err != nil {
		return err
	}
	p.mu.Lock() // the hosts refresher reads dir and sb under mu
	p.dir = dir
	p.mu.Unlock()
	if err := os.Chmod(p.dir, 0o755); err != nil {
		return errors.Join(err, p.release())
	}
	sb, err := r.cfg.Network(ctx, obj)
	if err != nil {
		return errors.Join(fmt.Errorf("pod %s: sandbox: %w", p.key, err), p.release())
	}
	p.mu.Lock()
	p.sb = sb
	p.mu.Unlock()
	if len(p.sb.IPs) == 0 {
		return errors.Join(fmt.Errorf("pod %s: the sandbox has no IP", p.key), p.release())
	}
	if p.fwd, err = r.acquireForwarder(p.sb, kc); err != nil {
		return errors.Join(fmt.Errorf("pod %s: API server forwarder: %w", p.key, err), p.release())
	}
	if err := p.writeNetworkFiles(); err != nil {
		return errors.Join(err, p.release())
	}
	p.mu.Lock()
	p.sandboxErr = nil
	p.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.writeStatus(sctx); err != nil {
		return errors.Join(fmt.Errorf("pod %s: publishing its IP: %w", p.key, err), p.release())
	}
	return nil
}

func (p *pod) podIP() string { return p.sb.IPs[0].String() }

func (p *pod) hostIP() string {
	for _, n := range p.kc.Nodes() {
		if n.Name == p.obj.Spec.NodeName && n.IP.IsValid() {
			return n.IP.String()
		}
	}
	return ""
}

// start runs the pod's containers and keeps its status in the background.
func (p *pod) start() {
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		p.statusLoop()
	}()
	go func() {
		defer p.wg.Done()
		p.run()
	}()
}

// changed asks the status loop to write the pod's status.
func (p *pod) changed() {
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

func (p *pod) statusLoop() {
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.notify:
		}
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		if err := p.writeStatus(ctx); err != nil && p.ctx.Err() == nil {
			p.log.Warn("writing pod status failed", "err", err)
		}
		cancel()
	}
}

// sleep waits d or until the pod stops; false if it stopped.
func (p *pod) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// run prepares the pod (images and volumes, retried every second as a
// kubelet keeps a pod ContainerCreating), then runs its init containers in
// order and its containers.
func (p *pod) run() {
	for {
		err := p.prepare()
		if err == nil {
			break
		}
		if p.ctx.Err() != nil {
			return
		}
		reason := "ContainerCreating"
		if errors.Is(err, errImageNotFound) {
			reason = "ErrImagePull"
		}
		p.log.Info("pod not ready to start", "reason", reason, "err", err)
		p.setWaiting(reason, err.Error())
		if !p.sleep(time.Second) {
			return
		}
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.refreshTokens(p.ctx)
	}()
	for _, c := range p.ctrs {
		switch c.kind {
		case kindInit:
			if !p.supervise(c) {
				return
			}
		case kindSidecar:
			p.goSupervise(c)
		case kindMain:
			p.mu.Lock()
			p.mainStarted = true
			p.mu.Unlock()
			p.goSupervise(c)
		}
	}
}

func (p *pod) goSupervise(c *container) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.supervise(c)
	}()
}

func (p *pod) setWaiting(reason, msg string) {
	p.mu.Lock()
	for _, c := range p.ctrs {
		if !c.running && c.terminated == nil {
			c.waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: msg}
		}
	}
	p.mu.Unlock()
	p.changed()
}

// prepare resolves and unpacks every container's image and makes the
// volumes.
func (p *pod) prepare() error {
	for _, c := range p.ctrs {
		img, err := p.r.images.get(p.ctx, c.spec.Image)
		if err != nil {
			return err
		}
		c.image = img
	}
	return p.makeVolumes(p.ctx)
}

// supervise runs c, restarting it as the restart policy says, until the
// pod stops; for an init container, until it succeeded (true).
func (p *pod) supervise(c *container) bool {
	backOff := p.r.cfg.BackOff
	log := p.log.With("container", c.spec.Name)
	for {
		if p.ctx.Err() != nil {
			return false
		}
		started := time.Now()
		cmd, err := p.startContainer(c)
		ran := err == nil
		if err != nil {
			if p.ctx.Err() != nil {
				return false
			}
			log.Warn("container did not start", "err", err)
			p.mu.Lock()
			c.waiting = &corev1.ContainerStateWaiting{Reason: "CreateContainerConfigError", Message: err.Error()}
			p.mu.Unlock()
			p.changed()
		} else {
			log.Info("container started", "pid", cmd.Process.Pid, "image", c.image.ref)
			probeCtx, stopProbe := context.WithCancel(p.ctx)
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.probes(probeCtx, c, cmd.Process)
			}()
			werr := cmd.Wait()
			stopProbe()
			stopped := p.ctx.Err() != nil
			term := termination(cmd.ProcessState, werr, started)
			p.mu.Lock()
			c.running, c.ready, c.proc = false, false, nil
			c.last = term
			e := Exit{Pod: p.key, Container: c.spec.Name, Code: term.ExitCode, Signal: term.Message, Restarts: c.restarts, Stopped: stopped}
			p.mu.Unlock()
			p.r.recordExit(e)
			log.Info("container exited", "code", term.ExitCode, "signal", term.Message, "stopped", stopped)
			if stopped {
				return false
			}
			if term.ExitCode == 0 && c.kind == kindInit {
				p.mu.Lock()
				c.terminated, c.last = term, nil
				p.mu.Unlock()
				p.changed()
				return true
			}
			if !p.restarts(c, term.ExitCode) {
				p.mu.Lock()
				c.terminated, c.last = term, nil
				p.mu.Unlock()
				p.changed()
				return false
			}
			if time.Since(started) > resetBackOff {
				backOff = p.r.cfg.BackOff
			}
			p.mu.Lock()
			c.waiting = &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
				Message: fmt.Sprintf("back-off %v restarting failed container %s", backOff, c.spec.Name)}
			p.mu.Unlock()
			p.changed()
		}
		if !p.sleep(backOff) {
			return false
		}
		backOff = min(2*backOff, maxBackOff)
		if ran {
			// A container that never started (a missing ConfigMap key, say)
			// is retried without counting a restart, as the kubelet does.
			p.mu.Lock()
			c.restarts++
			p.mu.Unlock()
		}
	}
}

// restarts reports whether c restarts after exiting with code.
func (p *pod) restarts(c *container, code int32) bool {
	if c.kind == kindSidecar {
		return true
	}
	switch p.obj.Spec.RestartPolicy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return code != 0
	default:
		// Always; a failed init container is retried, a succeeded one is
		// not (handled by the caller).
		return true
	}
}

func termination(ps *os.ProcessState, werr error, started time.Time) *corev1.ContainerStateTerminated {
	now := time.Now()
	t := &corev1.ContainerStateTerminated{Reason: "Completed"}
	t.StartedAt.Time, t.FinishedAt.Time = started, now
	if ps == nil {
		t.ExitCode, t.Reason, t.Message = 128, "Error", fmt.Sprint(werr)
		return t
	}
	ws, _ := ps.Sys().(syscall.WaitStatus)
	switch {
	case ws.Signaled():
		t.ExitCode = 128 + int32(ws.Signal())
		t.Signal = int32(ws.Signal())
		t.Message = ws.Signal().String()
		t.Reason = "Error"
	default:
		t.ExitCode = int32(ws.ExitStatus())
		if t.ExitCode != 0 {
			t.Reason = "Error"
		}
	}
	return t
}

// startContainer computes c's process (command, environment, mounts,
// user) and starts it inside the pod's network namespace.
func (p *pod) startContainer(c *container) (*exec.Cmd, error) {
	spec, err := p.initSpec(c)
	if err != nil {
		return nil, err
	}
	cdir := filepath.Join(p.dir, "containers", c.spec.Name)
	spec.Upper, spec.Work, spec.Root = filepath.Join(cdir, "upper"), filepath.Join(cdir, "work"), filepath.Join(cdir, "root")
	// A restarted container gets a fresh writable layer, as in Kubernetes.
	if err := os.RemoveAll(cdir); err != nil {
		return nil, err
	}
	for _, d := range []string{spec.Upper, spec.Work, spec.Root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	specFile := filepath.Join(cdir, "init.json")
	if err := os.WriteFile(specFile, b, 0o600); err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Args = []string{"podrun-init " + p.key.String() + "/" + c.spec.Name}
	cmd.Env = []string{initEnv + "=" + specFile}
	cmd.Dir = "/"
	w := &lineWriter{buf: c.out, emit: func(line []byte) {
		if p.r.cfg.Output != nil {
			p.r.cfg.Output(p.key, c.spec.Name, line)
		}
	}}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx.Err() != nil {
		return nil, p.ctx.Err()
	}
	if err := p.sb.NS.Start(cmd); err != nil {
		return nil, fmt.Errorf("starting container %s: %w", c.spec.Name, err)
	}
	c.proc, c.running, c.startedAt, c.waiting, c.terminated = cmd.Process, true, time.Now(), nil, nil
	// A container without a readiness probe is ready once it runs (once
	// its startup probe succeeded, if it has one: startup.go).
	c.ready = c.spec.ReadinessProbe == nil && c.spec.StartupProbe == nil
	p.changed()
	return cmd, nil
}

// initSpec is c's process as Kubernetes would run it.
func (p *pod) initSpec(c *container) (*initSpec, error) {
	img := c.image
	base := map[string]string{
		"HOSTNAME":                p.obj.Name,
		"KUBERNETES_SERVICE_HOST": "127.0.0.1",
		"KUBERNETES_SERVICE_PORT": strconv.Itoa(p.fwd.port),
		"KUBERNETES_PORT":         "tcp://127.0.0.1:" + strconv.Itoa(p.fwd.port),
	}
	if p.obj.Spec.HostNetwork {
		base["HOSTNAME"] = p.obj.Spec.NodeName
	}
	env, vars, err := containerEnv(p.ctx, p.obj, c.spec, img.config.Env, base, fieldValues(p.obj, p.podIP(), p.hostIP()), kubeObjects{p.kc})
	if err != nil {
		return nil, err
	}
	argv, err := command(c.spec, img.config.Entrypoint, img.config.Cmd, vars)
	if err != nil {
		return nil, err
	}
	uid, gid, groups, err := p.identity(c)
	if err != nil {
		return nil, err
	}
	s := &initSpec{Lower: img.rootfs, Argv: argv, Env: env, UID: uid, GID: gid, Groups: groups,
		Dir: c.spec.WorkingDir}
	if s.Dir == "" {
		s.Dir = img.config.WorkingDir
	}
	if sc := c.spec.SecurityContext; sc != nil {
		s.ReadOnly = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
		s.Privileged = sc.Privileged != nil && *sc.Privileged
		s.NoNewPrivs = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
	}
	s.Mounts = append(s.Mounts,
		mountSpec{Source: filepath.Join(p.dir, "hosts"), Target: "/etc/hosts"},
		mountSpec{Source: filepath.Join(p.dir, "resolv.conf"), Target: "/etc/resolv.conf"})
	if dir, ok := p.volumes[apiAccessVolume]; ok {
		s.Mounts = append(s.Mounts, mountSpec{Source: dir, Target: ServiceAccountDir, ReadOnly: true})
	}
	for _, m := range c.spec.VolumeMounts {
		src, ok := p.volumes[m.Name]
		if !ok {
			return nil, fmt.Errorf("volume mount %s: no volume %q", m.MountPath, m.Name)
		}
		if m.SubPathExpr != "" {
			return nil, fmt.Errorf("volume mount %s: subPathExpr is not supported", m.MountPath)
		}
		if m.SubPath != "" {
			if !filepath.IsLocal(m.SubPath) {
				return nil, fmt.Errorf("volume mount %s: subPath %q leaves the volume", m.MountPath, m.SubPath)
			}
			src = filepath.Join(src, m.SubPath)
			if _, err := os.Stat(src); errors.Is(err, os.ErrNotExist) {
				if err := os.MkdirAll(src, 0o755); err != nil {
					return nil, err
				}
			}
		}
		s.Mounts = append(s.Mounts, mountSpec{Source: src, Target: m.MountPath, ReadOnly: m.ReadOnly})
	}
	return s, nil
}

// identity is the user, group and supplementary groups c runs as: the
// container's security context, else the pod's, else the image's user
// (numeric, or a name in the image's /etc/passwd and /etc/group).
func (p *pod) identity(c *container) (uid, gid int, groups []int, err error) {
	psc := p.obj.Spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	csc := c.spec.SecurityContext
	if csc == nil {
		csc = &corev1.SecurityContext{}
	}
	iu, ig, err := imageUser(c.image)
	if err != nil {
		return 0, 0, nil, err
	}
	uid, gid = iu, ig
	if psc.RunAsUser != nil {
		uid = int(*psc.RunAsUser)
	}
	if csc.RunAsUser != nil {
		uid = int(*csc.RunAsUser)
	}
	if psc.RunAsGroup != nil {
		gid = int(*psc.RunAsGroup)
	}
	if csc.RunAsGroup != nil {
		gid = int(*csc.RunAsGroup)
	}
	nonRoot := psc.RunAsNonRoot
	if csc.RunAsNonRoot != nil {
		nonRoot = csc.RunAsNonRoot
	}
	if nonRoot != nil && *nonRoot && uid == 0 {
		return 0, 0, nil, errors.New("container has runAsNonRoot and would run as root")
	}
	for _, g := range psc.SupplementalGroups {
		groups = append(groups, int(g))
	}
	if psc.FSGroup != nil {
		groups = append(groups, int(*psc.FSGroup))
	}
	return uid, gid, groups, nil
}

// imageUser parses the image's User ("uid", "uid:gid", or names).
func imageUser(img *image) (uid, gid int, err error) {
	u := img.config.User
	if u == "" {
		return 0, 0, nil
	}
	user, group, hasGroup := strings.Cut(u, ":")
	if uid, err = lookupID(filepath.Join(img.rootfs, "etc", "passwd"), user); err != nil {
		return 0, 0, fmt.Errorf("image user %q: %w", u, err)
	}
	gid = uid
	if hasGroup {
		if gid, err = lookupID(filepath.Join(img.rootfs, "etc", "group"), group); err != nil {
			return 0, 0, fmt.Errorf("image group %q: %w", u, err)
		}
	}
	return uid, gid, nil
}

// lookupID returns a numeric name as is, else the third field of its line
// in a passwd or group file.
func lookupID(file, name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil {
		return n, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 3 && f[0] == name {
			return strconv.Atoi(f[2])
		}
	}
	return 0, fmt.Errorf("%s not in %s", name, file)
}

// stop ends the pod: SIGTERM to every process, SIGKILL after the grace
// period, then the sandbox, forwarder and directory go.
func (p *pod) stop() error {
	p.cancel()
	grace := p.r.cfg.MaxGrace
	if g := p.obj.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = min(grace, time.Duration(*g)*time.Second)
	}
	p.signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		p.log.Info("grace period over; killing", "grace", grace)
		p.signal(syscall.SIGKILL)
		<-done
	}
	return p.cleanup()
}

func (p *pod) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.ctrs {
		if c.proc != nil {
			_ = c.proc.Signal(sig)
		}
	}
}

// cleanup stops the pod's context and releases what makeSandbox made;
// safe on a half-made pod.
func (p *pod) cleanup() error {
	p.cancel()
	return p.release()
}

// release removes the pod's forwarder, sandbox and directory, whichever
// exist.
func (p *pod) release() error {
	var errs []error
	if p.fwd != nil {
		p.r.releaseForwarder(p.fwd)
		p.fwd = nil
	}
	if p.sb.Release != nil {
		errs = append(errs, p.sb.Release())
	}
	p.mu.Lock()
	p.sb = Sandbox{}
	dir := p.dir
	p.dir = ""
	p.mu.Unlock()
	if dir != "" {
		errs = append(errs, os.RemoveAll(dir))
	}
	return errors.Join(errs...)
}

// lineWriter keeps a container's output and hands each complete line to
// emit.
type lineWriter struct {
	mu      sync.Mutex
	buf     *kube.TailBuffer
	partial []byte
	emit    func([]byte)
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.buf.Write(b)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, b...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.emit(w.partial[:i])
		w.partial = w.partial[i+1:]
	}
	if len(w.partial) > 64<<10 {
		w.emit(w.partial)
		w.partial = nil
	}
	return len(b), nil
}
