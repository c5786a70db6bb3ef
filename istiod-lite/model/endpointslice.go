package model

import (
	"cmp"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// EndpointSlices feed the model for Services without a selector, whose
// endpoints Kubernetes does not derive from pods: whoever manages the
// Service writes its EndpointSlices (label kubernetes.io/service-name).
// As Istio's ambient index does (pilot/pkg/serviceregistry/ambient,
// endpointSlicesBuilder and matchingServicesWithoutSelectors):
//
//   - an endpoint whose targetRef is a Pod adds the Service to that pod's
//     workload (matched by namespace, name and, when set, UID), with the
//     Service's ports resolved against the pod as for a selecting Service;
//   - any other endpoint becomes a workload of its own: uid
//     "<cluster>/discovery.k8s.io/EndpointSlice/<namespace>/<slice>/<ip>",
//     named after the slice, HOST_NETWORK (its address may be shared, it is
//     not a pod of the mesh, no HBONE), no service account or policies,
//     HEALTHY when the endpoint is ready (or says nothing) and UNHEALTHY
//     otherwise, so that ztunnel sends to ready endpoints only; its ports
//     are the slice's TCP ports, matched to the Service's by name.
//
// Slices of FQDN addresses, of no Service or of a Service that does not
// exist (or is ExternalName) are ignored. Slices of Services with a
// selector are left to the pods (Kubernetes writes them from the pods).

// sliceIndex is what EndpointSlices add to pods: per pod, the Services
// without selector that list it.
type sliceIndex struct {
	pods map[podRef][]*corev1.Service
}

type podRef struct{ namespace, name string }

// sliceService returns the Service a slice belongs to, if the model
// should read the slice.
func sliceService(es *discoveryv1.EndpointSlice, services map[podRef]*corev1.Service) *corev1.Service {
	if es == nil || es.AddressType == discoveryv1.AddressTypeFQDN {
		return nil
	}
	name, ok := es.Labels[discoveryv1.LabelServiceName]
	if !ok {
		return nil
	}
	svc := services[podRef{es.Namespace, name}]
	if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName || len(svc.Spec.Selector) > 0 {
		return nil
	}
	return svc
}

func servicesByName(svcs []*corev1.Service) map[podRef]*corev1.Service {
	m := make(map[podRef]*corev1.Service, len(svcs))
	for _, s := range svcs {
		if s != nil {
			m[podRef{s.Namespace, s.Name}] = s
		}
	}
	return m
}

// indexEndpointSlices reads the slices: the pods they name, and the
// workloads of their other endpoints.
func indexEndpointSlices(in *Inputs, opt Options) (*sliceIndex, []*workloadapi.Workload) {
	ix := &sliceIndex{pods: map[podRef][]*corev1.Service{}}
	if len(in.EndpointSlices) == 0 {
		return ix, nil
	}
	services := servicesByName(in.Services)
	pods := map[podRef]*corev1.Pod{}
	for _, p := range in.Pods {
		if p != nil {
			pods[podRef{p.Namespace, p.Name}] = p
		}
	}
	var workloads []*workloadapi.Workload
	seenUID := map[string]bool{}
	for _, es := range in.EndpointSlices {
		svc := sliceService(es, services)
		if svc == nil {
			continue
		}
		key := svc.Namespace + "/" + ServiceHostname(svc.Name, svc.Namespace, opt.DomainSuffix)
		var ports *workloadapi.PortList
		for _, ep := range es.Endpoints {
			if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" {
				ns := ref.Namespace
				if ns == "" {
					ns = es.Namespace
				}
				r := podRef{ns, ref.Name}
				if p := pods[r]; p != nil && (ref.UID == "" || ref.UID == p.UID) && !slices.Contains(ix.pods[r], svc) {
					ix.pods[r] = append(ix.pods[r], svc)
				}
				continue
			}
			addrs := addressBytes(ep.Addresses)
			if len(addrs) == 0 || len(addrs) != len(ep.Addresses) {
				continue // none, or one unparsable: skip the endpoint, as Istio does
			}
			first, _ := netip.ParseAddr(ep.Addresses[0])
			uid := opt.ClusterID + "/discovery.k8s.io/EndpointSlice/" + es.Namespace + "/" + es.Name + "/" + first.String()
			if seenUID[uid] {
				continue
			}
			seenUID[uid] = true
			if ports == nil {
				ports = slicePorts(es, svc)
			}
			status := workloadapi.WorkloadStatus_HEALTHY
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				status = workloadapi.WorkloadStatus_UNHEALTHY
			}
			workloads = append(workloads, &workloadapi.Workload{
				Uid:            uid,
				Name:           es.Name,
				Namespace:      es.Namespace,
				Addresses:      addrs,
				Network:        opt.Network,
				TrustDomain:    opt.TrustDomain,
				ClusterId:      opt.ClusterID,
				NetworkMode:    workloadapi.NetworkMode_HOST_NETWORK,
				TunnelProtocol: workloadapi.TunnelProtocol_NONE,
				Services:       map[string]*workloadapi.PortList{key: ports},
				Status:         status,
			})
		}
	}
	for r, svcs := range ix.pods {
		slices.SortFunc(svcs, func(a, b *corev1.Service) int {
			return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
		})
		ix.pods[r] = svcs
	}
	slices.SortFunc(workloads, func(a, b *workloadapi.Workload) int { return cmp.Compare(a.Uid, b.Uid) })
	return ix, workloads
}

// slicePorts maps the slice's TCP ports (named after the Service's ports,
// numbered as the endpoints listen) to the Service's ports.
func slicePorts(es *discoveryv1.EndpointSlice, svc *corev1.Service) *workloadapi.PortList {
	pl := &workloadapi.PortList{}
	for _, p := range es.Ports {
		if p.Name == nil || p.Port == nil || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) {
			continue
		}
		for _, sp := range svc.Spec.Ports {
			if sp.Name == *p.Name && tcp(sp.Protocol) {
				pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: uint32(sp.Port), TargetPort: uint32(*p.Port)})
				break
			}
		}
	}
	// The slice's port order is the writer's: sorted, the resource is the
	// same whatever the order (no push for a reordered slice).
	slices.SortFunc(pl.Ports, func(a, b *workloadapi.Port) int {
		return cmp.Or(cmp.Compare(a.ServicePort, b.ServicePort), cmp.Compare(a.TargetPort, b.TargetPort))
	})
	return pl
}

// services returns the keys and port lists of the selector-less Services
// whose slices name pod, resolved against the pod.
func (ix *sliceIndex) services(pod *corev1.Pod, opt Options) map[string]*workloadapi.PortList {
	svcs := ix.pods[podRef{pod.Namespace, pod.Name}]
	if len(svcs) == 0 {
		return nil
	}
	out := make(map[string]*workloadapi.PortList, len(svcs))
	for _, svc := range svcs {
		pl := &workloadapi.PortList{}
		for _, p := range svc.Spec.Ports {
			if !tcp(p.Protocol) {
				continue
			}
			if target, ok := resolveTargetPort(pod, p); ok {
				pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: uint32(p.Port), TargetPort: target})
			}
		}
		out[svc.Namespace+"/"+ServiceHostname(svc.Name, svc.Namespace, opt.DomainSuffix)] = pl
	}
	return out
}

// keys lists the Services pod gets from slices, for the memo.
func (ix *sliceIndex) keys(pod *corev1.Pod) []*corev1.Service {
	return ix.pods[podRef{pod.Namespace, pod.Name}]
}
