package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// istioSystem is the namespace of ztunnel and istiod-lite (deploy/).
const istioSystem = "istio-system"

// kubeClient is a clientset and the REST config it was built from.
type kubeClient struct {
	kubernetes.Interface
	rc *rest.Config
}

// kube returns a client of the cluster named by kubectl's flags.
func (o *Options) kube() (*kubeClient, error) {
	rc, err := o.Kube.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &kubeClient{Interface: cs, rc: rc}, nil
}

// namespace is -n, or the kubeconfig context's namespace, or "default".
func (o *Options) namespace() string {
	if o.Kube.Namespace != nil && *o.Kube.Namespace != "" {
		return *o.Kube.Namespace
	}
	if ns, _, err := o.Kube.ToRawKubeConfigLoader().Namespace(); err == nil && ns != "" {
		return ns
	}
	return "default"
}

// findPod returns a running pod of namespace matching selector, on node
// when node is not empty.
func (k *kubeClient) findPod(ctx context.Context, namespace, selector, node string) (*corev1.Pod, error) {
	opts := metav1.ListOptions{LabelSelector: selector}
	if node != "" {
		opts.FieldSelector = "spec.nodeName=" + node
	}
	pods, err := k.CoreV1().Pods(namespace).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("listing pods %s in %s: %w", selector, namespace, err)
	}
	for i := range pods.Items {
		if pods.Items[i].Status.Phase == corev1.PodRunning {
			return &pods.Items[i], nil
		}
	}
	where := ""
	if node != "" {
		where = " on node " + node
	}
	return nil, fmt.Errorf("no running pod %s in namespace %s%s", selector, namespace, where)
}

// portForward forwards a local loopback port to port of pod through the
// API server, as kubectl port-forward does, and returns the local address
// and a function that ends the forward.
func (k *kubeClient) portForward(ctx context.Context, pod *corev1.Pod, port int) (string, func(), error) {
	tr, upgrader, err := spdy.RoundTripperFor(k.rc)
	if err != nil {
		return "", nil, fmt.Errorf("port-forward: %w", err)
	}
	url := k.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: tr}, http.MethodPost, url)
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(port)}, stop, ready, nil, nil)
	if err != nil {
		return "", nil, fmt.Errorf("port-forward to %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-errc:
		return "", nil, fmt.Errorf("port-forward to %s/%s: %w", pod.Namespace, pod.Name, err)
	case <-ctx.Done():
		close(stop)
		return "", nil, ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		close(stop)
		return "", nil, errors.Join(errors.New("port-forward: no local port"), err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local))), func() { close(stop); <-errc }, nil
}

// meshRoot returns the mesh root certificate (PEM) of ConfigMap
// istio-system/istio-ca-root-cert, which istiod-lite publishes.
func (k *kubeClient) meshRoot(ctx context.Context) ([]byte, error) {
	cm, err := k.CoreV1().ConfigMaps(istioSystem).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("the mesh root to check istiod-lite with (or give --istiod-ca): %w", err)
	}
	pem := cm.Data["root-cert.pem"]
	if pem == "" {
		return nil, fmt.Errorf("ConfigMap %s/istio-ca-root-cert holds no root-cert.pem", istioSystem)
	}
	return []byte(pem), nil
}
