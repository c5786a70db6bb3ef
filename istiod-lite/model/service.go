package model

import (
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// ServiceHostname returns a service's cluster hostname,
// <name>.<namespace>.svc.<domainSuffix>.
func ServiceHostname(name, namespace, domainSuffix string) string {
	return name + "." + namespace + ".svc." + domainSuffix
}

// buildService translates a Service. Its key is "<namespace>/<hostname>".
func buildService(svc *corev1.Service, opt Options) *workloadapi.Service {
	s := &workloadapi.Service{
		Name:      svc.Name,
		Namespace: svc.Namespace,
		Hostname:  ServiceHostname(svc.Name, svc.Namespace, opt.DomainSuffix),
	}
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 && svc.Spec.ClusterIP != "" {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	// Headless services ("None") have no virtual IP; addressBytes skips it.
	for _, a := range addressBytes(clusterIPs) {
		s.Addresses = append(s.Addresses, &workloadapi.NetworkAddress{Network: opt.Network, Address: a})
	}
	for _, p := range svc.Spec.Ports {
		if !tcp(p.Protocol) {
			continue
		}
		s.Ports = append(s.Ports, &workloadapi.Port{ServicePort: uint32(p.Port), TargetPort: serviceTargetPort(p), AppProtocol: appProtocol(p)})
	}
	s.IpFamilies = ipFamilies(svc, s.Addresses)
	return s
}

// serviceTargetPort is the target port as far as the service alone says: the
// numeric target port, the service port when unset, or 0 when the target is
// a named container port (each workload's PortList resolves it).
func serviceTargetPort(p corev1.ServicePort) uint32 {
	tp := p.TargetPort
	if tp.Type == intstr.String && tp.StrVal != "" {
		if n, ok := numericString(tp.StrVal); ok {
			return n
		}
		return 0
	}
	if tp.IntVal == 0 {
		return uint32(p.Port)
	}
	return uint32(tp.IntVal)
}

// ipFamilies reads spec.ipFamilies (two families: DUAL), or, when they are
// not given, infers them from the service's addresses. A service with neither
// is AUTOMATIC.
func ipFamilies(svc *corev1.Service, addrs []*workloadapi.NetworkAddress) workloadapi.IPFamilies {
	var v4, v6 bool
	if len(svc.Spec.IPFamilies) > 0 {
		for _, f := range svc.Spec.IPFamilies {
			v4 = v4 || f == corev1.IPv4Protocol
			v6 = v6 || f == corev1.IPv6Protocol
		}
	} else {
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.Address)
			v4 = v4 || ip.Is4()
			v6 = v6 || ip.Is6()
		}
	}
	switch {
	case v4 && v6:
		return workloadapi.IPFamilies_DUAL
	case v4:
		return workloadapi.IPFamilies_IPV4_ONLY
	case v6:
		return workloadapi.IPFamilies_IPV6_ONLY
	}
	return workloadapi.IPFamilies_AUTOMATIC
}

// appProtocol derives a Service port's application protocol as Istio does
// (pkg/config/kube ConvertProtocol): the port's appProtocol when set (with
// Kubernetes' kubernetes.io/h2c, /ws and /wss names), else the port name's
// prefix before "-" ("http-web" is HTTP); an unrecognised name on SMTP,
// DNS, MySQL or MongoDB's well-known port is TCP; anything else is UNKNOWN (sniffed). gRPC-Web
// and Istio's other protocols have no Workload API value: UNKNOWN.
func appProtocol(p corev1.ServicePort) workloadapi.AppProtocol {
	name := p.Name
	if p.AppProtocol != nil {
		name = *p.AppProtocol
		switch name {
		case "kubernetes.io/h2c":
			return workloadapi.AppProtocol_HTTP2
		case "kubernetes.io/ws":
			return workloadapi.AppProtocol_HTTP11
		case "kubernetes.io/wss":
			return workloadapi.AppProtocol_TLS
		}
	}
	if len(name) >= len("grpc-web") && strings.EqualFold(name[:len("grpc-web")], "grpc-web") {
		return workloadapi.AppProtocol_UNKNOWN
	}
	if i := strings.IndexByte(name, '-'); i >= 0 {
		name = name[:i]
	}
	switch strings.ToLower(name) {
	case "http":
		return workloadapi.AppProtocol_HTTP11
	case "http2":
		return workloadapi.AppProtocol_HTTP2
	case "grpc":
		return workloadapi.AppProtocol_GRPC
	case "tls", "https":
		return workloadapi.AppProtocol_TLS
	case "tcp":
		return workloadapi.AppProtocol_TCP
	case "mongo", "mysql", "redis", "udp", "http_proxy":
		// Istio's protocols that have no Workload API value.
		return workloadapi.AppProtocol_UNKNOWN
	}
	switch p.Port {
	case 25, 53, 3306, 27017: // SMTP, DNS, MySQL, MongoDB
		return workloadapi.AppProtocol_TCP
	}
	return workloadapi.AppProtocol_UNKNOWN
}
