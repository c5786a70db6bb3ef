package podrun

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A container's process is the test binary itself, re-executed with
// initEnv naming a JSON initSpec: its init function (below) sets up the
// container's file system in the private mount namespace the Runner
// started it in (CLONE_NEWNS), chroots, takes the container's user and
// executes the container's command. The network namespace is inherited:
// the Runner starts the process from a thread inside the pod's.
const initEnv = "PODRUN_CONTAINER_INIT"

// initSpec is what the init needs to know.
type initSpec struct {
	// Lower is the image's unpacked file system; Upper and Work the
	// container's writable layer; Root where the overlay is mounted.
	Lower, Upper, Work, Root string
	// ReadOnly mounts the root read-only (readOnlyRootFilesystem).
	ReadOnly bool
	// Privileged gives the host's /dev and a writable /sys.
	Privileged bool
	// Mounts are bind mounts, in order.
	Mounts []mountSpec
	// Argv and Env of the process; Argv[0] is resolved in the root's PATH
	// when it has no slash.
	Argv, Env []string
	// Dir is the working directory; default /.
	Dir string
	// UID, GID and Groups the process runs as.
	UID, GID int
	Groups   []int
	// NoNewPrivs sets PR_SET_NO_NEW_PRIVS (allowPrivilegeEscalation: false).
	NoNewPrivs bool
}

type mountSpec struct {
	Source, Target string
	ReadOnly       bool
}

func init() {
	path := os.Getenv(initEnv)
	if path == "" {
		return
	}
	runtime.LockOSThread()
	err := containerInit(path)
	fmt.Fprintf(os.Stderr, "podrun: container init: %v\n", err)
	os.Exit(127)
}

// containerInit only returns on error.
func containerInit(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var s initSpec
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	// Nothing mounted here propagates to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private: %w", err)
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", s.Lower, s.Upper, s.Work)
	if err := unix.Mount("overlay", s.Root, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mounting the root overlay: %w", err)
	}
	// Mount points first: the root may become read-only.
	points := []struct {
		target string
		file   bool
	}{{"/proc", false}, {"/dev", false}, {"/sys", false}}
	for _, m := range s.Mounts {
		fi, err := os.Stat(m.Source)
		if err != nil {
			return fmt.Errorf("mount %s: %w", m.Target, err)
		}
		points = append(points, struct {
			target string
			file   bool
		}{m.Target, !fi.IsDir()})
	}
	for _, p := range points {
		if err := mountPoint(s.Root, p.target, p.file); err != nil {
			return err
		}
	}
	if s.ReadOnly {
		if err := unix.Mount(s.Root, s.Root, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("binding the root: %w", err)
		}
		if err := unix.Mount("", s.Root, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making the root read-only: %w", err)
		}
	}
	if err := unix.Mount("proc", filepath.Join(s.Root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting /proc: %w", err)
	}
	if err := mountDev(s.Root, s.Privileged); err != nil {
		return err
	}
	if err := bind("/sys", filepath.Join(s.Root, "sys"), !s.Privileged, true); err != nil {
		return err
	}
	for _, m := range s.Mounts {
		// Recursive, as runc binds Kubernetes volumes: a host path holding
		// mounts (the nsfs files of /var/run/netns) keeps them.
		if err := bind(m.Source, filepath.Join(s.Root, m.Target), m.ReadOnly, true); err != nil {
			return err
		}
	}
	if err := unix.Chroot(s.Root); err != nil {
		return fmt.Errorf("chroot: %w", err)
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
	if s.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("no_new_privs: %w", err)
		}
	}
	return execAs(argv0, s.Argv, s.Env, s.UID, s.GID, s.Groups)
}

// execAs takes the user, group and supplementary groups, then executes
// argv0; it only returns on error.
func execAs(argv0 string, argv, env []string, uid, gid int, groups []int) error {
	// Credentials of this thread only: it is the one that executes, and
	// the process becomes single-threaded.
	gs := make([]uint32, len(groups))
	for i, g := range groups {
		gs[i] = uint32(g)
	}
	var gp unsafe.Pointer
	if len(gs) > 0 {
		gp = unsafe.Pointer(&gs[0])
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(gs)), uintptr(gp), 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
		return fmt.Errorf("setresgid %d: %w", gid, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
		return fmt.Errorf("setresuid %d: %w", uid, e)
	}
	// A change of user clears the parent-death signal: set it again, so
	// that the process dies with the test.
	if _, _, e := unix.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0); e != 0 {
		return fmt.Errorf("pdeathsig: %w", e)
	}
	return fmt.Errorf("exec %s: %w", argv0, unix.Exec(argv0, argv, env))
}

// mountPoint creates target (a directory, or an empty file) below root,
// refusing a path that leaves it.
func mountPoint(root, target string, file bool) error {
	rel := strings.TrimPrefix(filepath.Clean("/"+target), "/")
	if !filepath.IsLocal(rel) {
		return fmt.Errorf("mount point %q leaves the root", target)
	}
	p := filepath.Join(root, rel)
	if !file {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("mount point %s: %w", target, err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("mount point %s: %w", target, err)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", target, err)
	}
	return f.Close()
}

func bind(src, dst string, readOnly, recursive bool) error {
	flags := uintptr(unix.MS_BIND)
	if recursive {
		flags |= unix.MS_REC
	}
	if err := unix.Mount(src, dst, "", flags, ""); err != nil {
		return fmt.Errorf("binding %s: %w", dst, err)
	}
	if readOnly {
		if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making %s read-only: %w", dst, err)
		}
	}
	return nil
}

// mountDev gives the container the host's /dev when privileged, else a
// tmpfs with the usual character devices bound from the host's.
func mountDev(root string, privileged bool) error {
	dev := filepath.Join(root, "dev")
	if privileged {
		return bind("/dev", dev, false, true)
	}
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755,size=64k"); err != nil {
		return fmt.Errorf("mounting /dev: %w", err)
	}
	for _, d := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		if err := mountPoint(dev, d, true); err != nil {
			return err
		}
		if err := bind("/dev/"+d, filepath.Join(dev, d), false, false); err != nil {
			return err
		}
	}
	for _, l := range [][2]string{{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}} {
		if err := os.Symlink(l[0], filepath.Join(dev, l[1])); err != nil {
			return err
		}
	}
	return nil
}

// lookPath resolves a command without a slash in the PATH of env, inside
// the (already entered) root, as a container runtime does.
func lookPath(cmd string, env []string) (string, error) {
	if strings.Contains(cmd, "/") {
		return cmd, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, d := range filepath.SplitList(path) {
		p := filepath.Join(d, cmd)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", cmd, errors.New("executable file not found in $PATH"))
}
