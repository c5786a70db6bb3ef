// Package netns builds test topologies out of real Linux network
// namespaces: an underlay namespace with a bridge joining N node
// namespaces, each with a bridge of its own to which pod namespaces attach
// by veth. Every address is in 198.18.0.0/15 and no namespace has a route
// out, so nothing a test sends can leave the machine.
//
// Namespaces are named (bind-mounted under /var/run/netns, so `ip netns`
// lists them and their paths can be handed to other processes, as a
// container runtime hands CNI_NETNS to a CNI plugin). Each topology uses a
// unique name prefix that carries the creating process's pid; namespaces of
// processes that no longer run are removed when a new topology starts.
// Everything a topology creates is removed when it closes, veths before
// namespaces.
//
// The package also has the helpers a test needs to act as an unmodified
// application inside a namespace: Do runs a function on an OS thread that
// has entered the namespace (so sockets it opens live there), Start starts
// a process inside it, and Capture records frames on an interface with an
// AF_PACKET socket.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces are bind-mounted, as iproute2
// does it.
const Dir = "/var/run/netns"

// NS is a named network namespace.
type NS struct {
	// Name is the namespace's name under Dir.
	Name string
}

// Path is the namespace's bind mount, e.g. /var/run/netns/<name>.
func (n NS) Path() string { return filepath.Join(Dir, n.Name) }

// Open returns a handle to the namespace; the caller closes it.
func (n NS) Open() (netns.NsHandle, error) {
	h, err := netns.GetFromPath(n.Path())
	if err != nil {
		return netns.None(), fmt.Errorf("netns %s: %w", n.Name, err)
	}
	return h, nil
}

// Do runs f on an OS thread that has entered the namespace, and returns
// f's error. Sockets f opens belong to the namespace and stay usable from
// any goroutine after Do returns; goroutines f starts do not run in the
// namespace.
func (n NS) Do(f func() error) error {
	h, err := n.Open()
	if err != nil {
		return err
	}
	defer h.Close()
	return do(h, f)
}

func do(target netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// A thread whose namespace could not be restored must never run
		// another goroutine: exiting while locked makes the runtime end
		// the thread.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("entering netns: %w", err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leaving netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Start starts cmd inside the namespace: the process and its children live
// in it. cmd.SysProcAttr.Pdeathsig is set to SIGKILL unless set, so a test
// that dies does not leave the process running.
func (n NS) Start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if cmd.SysProcAttr.Pdeathsig == 0 {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	return n.Do(cmd.Start)
}

// Handle opens a netlink handle inside the namespace; the caller deletes it.
func (n NS) Handle() (*netlink.Handle, error) {
	h, err := n.Open()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", n.Name, err)
	}
	return nh, nil
}

// Sysctl writes a per-namespace sysctl such as "net/ipv4/ip_forward".
func (n NS) Sysctl(key, value string) error {
	return n.Do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
}

// create makes a new named namespace with its loopback up.
func create(name string) (NS, error) {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return NS{}, err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name) // leaves this thread in the new namespace
		if err != nil {
			// NewNamed may fail after unsharing; try to go back, and
			// never unlock if that fails too.
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
			errc <- fmt.Errorf("creating netns %s: %w", name, err)
			return
		}
		h.Close()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leaving netns %s: %w", name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		return NS{}, err
	}
	ns := NS{Name: name}
	nh, err := ns.Handle()
	if err != nil {
		return ns, errors.Join(err, remove(name))
	}
	defer nh.Close()
	lo, err := nh.LinkByName("lo")
	if err == nil {
		err = nh.LinkSetUp(lo)
	}
	if err != nil {
		return ns, errors.Join(fmt.Errorf("netns %s: loopback up: %w", name, err), remove(name))
	}
	return ns, nil
}

// remove deletes the namespace's veths, then the namespace itself. A
// namespace that does not exist is not an error.
func remove(name string) error {
	path := filepath.Join(Dir, name)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	if nh, err := (NS{Name: name}).Handle(); err == nil {
		links, _ := nh.LinkList()
		for _, l := range links {
			if l.Type() == "veth" {
				if err := nh.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
					errs = append(errs, fmt.Errorf("netns %s: deleting %s: %w", name, l.Attrs().Name, err))
				}
			}
		}
		nh.Close()
	}
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("netns %s: unmount: %w", name, err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("netns %s: %w", name, err))
	}
	return errors.Join(errs...)
}

// prefixRE matches the names this package gives namespaces: "mt", the pid
// of the creating process, "-", a random tag and "-".
var prefixRE = regexp.MustCompile(`^mt([0-9]+)-[a-z0-9]+-`)

// RemoveLeftovers deletes the namespaces of earlier topologies whose
// process no longer runs, and returns their names.
func RemoveLeftovers() ([]string, error) {
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		m := prefixRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || alive(pid) {
			continue
		}
		if err := remove(e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, e.Name())
	}
	return removed, errors.Join(errs...)
}

func alive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// List returns the names of the named namespaces that start with prefix.
func List(prefix string) ([]string, error) {
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if len(e.Name()) >= len(prefix) && e.Name()[:len(prefix)] == prefix {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// Listen opens a listener inside the namespace, as an application of the
// namespace would (address literals only: no resolver runs inside).
func (n NS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// Dial connects from inside the namespace, as an application of the
// namespace would.
func (n NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
