package model

import (
	"net/netip"

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
		s.Ports = append(s.Ports, &workloadapi.Port{ServicePort: uint32(p.Port), TargetPort: serviceTargetPort(p)})
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
