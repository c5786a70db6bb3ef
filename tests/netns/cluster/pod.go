package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ambient-go/mesh/tests/netns"
)

// PodSpec describes a pod to create.
type PodSpec struct {
	Namespace, Name string
	// ServiceAccount defaults to Name.
	ServiceAccount string
	// Labels of the pod (a service selects them; istio.io/dataplane-mode
	// enrolls or excludes the pod).
	Labels map[string]string
	// Unready starts the pod with its Ready condition False, as the
	// kubelet reports a pod whose readiness probe has not passed yet;
	// SetReady changes it. Default: Ready.
	Unready bool
}

// Pod is a running pod: a namespace attached to its node, known to
// istiod-lite, and handed to the node's ztunnel by the CNI plugin.
type Pod struct {
	*netns.Pod
	Spec PodSpec
	// UID is the pod's UID (also its CNI container id).
	UID     string
	node    *Node
	file    string // in the config directory
	unready atomic.Bool
}

// Key is namespace/name.
func (p *Pod) Key() string { return p.Spec.Namespace + "/" + p.Spec.Name }

// NodeOf returns the pod's node.
func (p *Pod) NodeOf() *Node { return p.node }

func (p *Pod) yaml() string {
	ready := "True"
	if p.unready.Load() {
		ready = "False"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  uid: %s
  labels: %s
spec:
  nodeName: %s
  serviceAccountName: %s
  containers:
  - name: app
    image: app
status:
  phase: Running
  podIP: %s
  conditions:
  - type: Ready
    status: "%s"
`, p.Spec.Name, p.Spec.Namespace, p.UID, flow(p.Spec.Labels), p.node.Name, p.Spec.ServiceAccount, p.IP, ready)
}

// SetReady publishes the pod's Ready condition (its Pod object in the
// config directory is written again), as the kubelet does when the
// readiness probe passes or fails.
func (p *Pod) SetReady(ready bool) error {
	p.unready.Store(!ready)
	if p.file == "" {
		return fmt.Errorf("pod %s has no object in the config directory", p.Key())
	}
	return p.node.rewrite(p.file)
}

// AddPod creates a pod on the node, as the kubelet and the runtime do: the
// Pod object is written to the config directory (with the address the
// topology gives it), the pod's namespace and veth are created, and once
// the node's ztunnel knows the workload (so that its ADD acknowledgement
// means capture is in place), the CNI plugin's ADD runs. An ADD that fails
// is returned as an error with the pod removed again.
func (n *Node) AddPod(spec PodSpec) (*Pod, error) {
	ps, err := n.AddPods([]PodSpec{spec})
	if err != nil {
		return nil, err
	}
	return ps[0], nil
}

// AddPods creates several pods on the node (see AddPod), writing their Pod
// objects in one file so that istiod-lite pushes them at once.
func (n *Node) AddPods(specs []PodSpec) ([]*Pod, error) {
	c := n.c
	var pods []*Pod
	var yaml []string
	for _, s := range specs {
		if s.ServiceAccount == "" {
			s.ServiceAccount = s.Name
		}
		tp, err := n.Node.AddPod(s.Namespace + "-" + s.Name)
		if err != nil {
			return nil, errors.Join(err, n.removePods(pods))
		}
		p := &Pod{Pod: tp, Spec: s, node: n, UID: fmt.Sprintf("uid-%s-%s-%s", n.Name, s.Namespace, s.Name)}
		p.unready.Store(s.Unready)
		pods = append(pods, p)
		yaml = append(yaml, p.yaml())
	}
	file := fmt.Sprintf("pods-%s-%s.yaml", n.Name, specs[0].Namespace+"-"+specs[0].Name)
	for _, p := range pods {
		p.file = file
	}
	c.Write(file, strings.Join(yaml, "---\n"))
	if z := n.Ztunnel(); z != nil {
		for _, p := range pods {
			if err := z.waitWorkload(p); err != nil {
				return nil, errors.Join(err, n.removePods(pods))
			}
		}
	}
	for i, p := range pods {
		if err := n.cni("ADD", p); err != nil {
			return nil, errors.Join(fmt.Errorf("CNI ADD of %s: %w", p.Key(), err), n.removePods(pods[i:]), n.deletePods(pods[:i]))
		}
		n.mu.Lock()
		n.pods[p.Key()] = p
		n.mu.Unlock()
	}
	return pods, nil
}

func (z *Ztunnel) waitWorkload(p *Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		ok, err := z.HasWorkload(ctx, p.IP)
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ztunnel %s did not learn workload %s (%s) within 10s: %v", z.Node.Name, p.Key(), p.IP, err)
		case <-z.done:
			return fmt.Errorf("ztunnel %s exited while waiting for workload %s", z.Node.Name, p.Key())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// removePods removes the namespaces and the config of pods never added.
func (n *Node) removePods(pods []*Pod) error {
	var errs []error
	for _, p := range pods {
		errs = append(errs, p.Pod.Remove())
		if p.file != "" {
			errs = append(errs, n.c.removeFile(p.file))
		}
	}
	return errors.Join(errs...)
}

func (n *Node) deletePods(pods []*Pod) error {
	var errs []error
	for _, p := range pods {
		errs = append(errs, p.Delete())
	}
	return errors.Join(errs...)
}

func (c *Cluster) removeFile(name string) error {
	err := removeIfExists(filepath.Join(c.ConfigDir, name))
	return err
}

// Pods returns the node's running pods.
func (n *Node) Pods() []*Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	ps := make([]*Pod, 0, len(n.pods))
	for _, p := range n.pods {
		ps = append(ps, p)
	}
	return ps
}

// Delete deletes the pod as the runtime does: CNI DEL, then the pod's
// namespace and veth go; the Pod object leaves the config directory.
// Deleting twice is not an error.
func (p *Pod) Delete() error {
	n := p.node
	n.mu.Lock()
	if n.pods[p.Key()] != p {
		n.mu.Unlock()
		return nil
	}
	delete(n.pods, p.Key())
	n.mu.Unlock()
	errs := []error{n.cni("DEL", p), p.Pod.Remove()}
	if p.file != "" {
		// Several pods may share the file: write it again without p.
		errs = append(errs, n.rewrite(p.file))
	}
	return errors.Join(errs...)
}

func (n *Node) rewrite(file string) error {
	var yaml []string
	for _, q := range n.Pods() {
		if q.file == file {
			yaml = append(yaml, q.yaml())
		}
	}
	if len(yaml) == 0 {
		return n.c.removeFile(file)
	}
	n.c.Write(file, strings.Join(yaml, "---\n"))
	return nil
}

// cniConfig is the network configuration the runtime passes: the plugin
// chained after a plugin whose result (prevResult) gave the pod its
// address on eth0.
func (n *Node) cniConfig(p *Pod) string {
	return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"mesh","type":"ztunnel-cni","zdsSocket":%q,"podStateDir":%q,`+
		`"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":%q}],`+
		`"ips":[{"address":"%s/24","gateway":"%s","interface":0}]}}`,
		n.ZDSSocket, n.PodStateDir, p.Path(), p.IP, n.Gateway)
}

// cni runs the CNI plugin for the pod, in the node's namespace, as a
// runtime does.
func (n *Node) cni(command string, p *Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(n.c.bin, "ztunnel-cni"))
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + p.UID,
		"CNI_NETNS=" + p.Path(),
		"CNI_IFNAME=eth0",
		fmt.Sprintf("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=%s;K8S_POD_UID=%s",
			p.Spec.Namespace, p.Spec.Name, p.UID, p.UID),
		"CNI_PATH=" + n.c.bin,
	}
	cmd.Stdin = strings.NewReader(n.cniConfig(p))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := n.Start(cmd); err != nil {
		return err
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%w: %s %s", err, strings.TrimSpace(out.String()), strings.TrimSpace(errb.String()))
	}
	return nil
}

// NewSandbox creates the namespace and veth of a pod whose object lives in
// an API server (Options.Kube), as a runtime creates the sandbox: the pod
// gets the next address of the node, and nothing is written to the config
// directory. Publish the address in the pod's status, then call Attach.
// uid is the Pod object's UID (also the CNI container id).
func (n *Node) NewSandbox(spec PodSpec, uid string) (*Pod, error) {
	if spec.ServiceAccount == "" {
		spec.ServiceAccount = spec.Name
	}
	tp, err := n.Node.AddPod(spec.Namespace + "-" + spec.Name)
	if err != nil {
		return nil, err
	}
	return &Pod{Pod: tp, Spec: spec, node: n, UID: uid}, nil
}

// Attach hands a sandbox to the node's ztunnel: once the ztunnel knows
// the workload (from istiod-lite, so that its ADD acknowledgement means
// capture is in place), the CNI plugin's ADD runs, and the pod counts
// among the node's pods (Delete and the cluster's teardown remove it). If
// anything fails, the sandbox is removed and the error returned.
func (p *Pod) Attach() error {
	n := p.node
	if z := n.Ztunnel(); z != nil {
		if err := z.waitWorkload(p); err != nil {
			return errors.Join(err, p.Pod.Remove())
		}
	}
	if err := n.cni("ADD", p); err != nil {
		return errors.Join(fmt.Errorf("CNI ADD of %s: %w", p.Key(), err), p.Pod.Remove())
	}
	n.mu.Lock()
	n.pods[p.Key()] = p
	n.mu.Unlock()
	return nil
}

// RemoveSandbox removes a sandbox that was never attached (its namespace
// and veth). Removing twice is not an error.
func (p *Pod) RemoveSandbox() error { return p.Pod.Remove() }
