package deployer

import (
	"fmt"
	"maps"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Labels and values Istio puts on the objects it deploys for a waypoint
// (pilot/pkg/config/kube/gateway, manifests/.../files/waypoint.yaml).
const (
	// GatewayNameLabel selects a waypoint's pods; the Service selects on it.
	GatewayNameLabel      = "gateway.networking.k8s.io/gateway-name"
	GatewayClassNameLabel = "gateway.networking.k8s.io/gateway-class-name"
	// ManagedLabel = ManagedValue marks a Deployment as deployed for a
	// waypoint (Istio's controller label of the istio-waypoint class).
	ManagedLabel = "gateway.istio.io/managed"
	ManagedValue = "istio.io-mesh-controller"
	// DataplaneModeLabel = none keeps ztunnel from capturing the
	// waypoint's own pods.
	DataplaneModeLabel = "istio.io/dataplane-mode"

	canonicalNameLabel     = "service.istio.io/canonical-name"
	canonicalRevisionLabel = "service.istio.io/canonical-revision"
	sidecarInjectLabel     = "sidecar.istio.io/inject"
)

// Ports of a waypoint pod.
const (
	MeshPort    = 15008 // HBONE
	MetricsPort = 15020
	StatusPort  = 15021 // /healthz/ready
)

// Paths inside the waypoint container.
const (
	tokenDir  = "/var/run/secrets/tokens"
	tokenFile = "istio-token"
	rootDir   = "/var/run/secrets/istio"
	rootFile  = "root-cert.pem"
	// RootCertConfigMap is the ConfigMap istiod-lite publishes the mesh
	// root in, in every namespace.
	RootCertConfigMap = "istio-ca-root-cert"
	// TokenAudience is the audience of the waypoint's projected
	// ServiceAccount token, the one the CA accepts.
	TokenAudience = "istio-ca"
	// tokenExpiry is Istio's (12 h); the kubelet rotates it at 80 %.
	tokenExpiry = 43200
)

// objects are the apply configurations deployed for one waypoint Gateway.
type objects struct {
	serviceAccount *corev1ac.ServiceAccountApplyConfiguration
	deployment     *appsv1ac.DeploymentApplyConfiguration
	service        *corev1ac.ServiceApplyConfiguration
}

// render returns what is deployed for gw: a ServiceAccount, a Deployment
// and a Service, each named after the Gateway, in its namespace, owned by
// it. It is pure.
func render(gw *gatewayv1.Gateway, cfg *Config) objects {
	name, ns := gw.Name, gw.Namespace
	owner := metav1ac.OwnerReference().
		WithAPIVersion(gatewayv1.GroupVersion.String()).WithKind("Gateway").
		WithName(name).WithUID(gw.UID).WithController(true)

	infraLabels, infraAnnotations := infrastructure(gw)
	// Ours win over the Gateway's infrastructure labels of the same key.
	meta := func(extra map[string]string) map[string]string {
		m := maps.Clone(infraLabels)
		if m == nil {
			m = map[string]string{}
		}
		maps.Copy(m, extra)
		return m
	}
	common := map[string]string{
		GatewayNameLabel:      name,
		GatewayClassNameLabel: string(gw.Spec.GatewayClassName),
		ManagedLabel:          ManagedValue,
	}

	sa := corev1ac.ServiceAccount(name, ns).
		WithLabels(meta(common)).
		WithOwnerReferences(owner)
	if len(infraAnnotations) > 0 {
		sa.WithAnnotations(infraAnnotations)
	}

	podLabels := meta(common)
	maps.Copy(podLabels, map[string]string{
		sidecarInjectLabel:     "false",
		DataplaneModeLabel:     "none",
		canonicalNameLabel:     name,
		canonicalRevisionLabel: "latest",
	})
	podAnnotations := maps.Clone(infraAnnotations)
	if podAnnotations == nil {
		podAnnotations = map[string]string{}
	}
	maps.Copy(podAnnotations, map[string]string{
		"prometheus.io/path":   "/stats/prometheus",
		"prometheus.io/port":   fmt.Sprint(MetricsPort),
		"prometheus.io/scrape": "true",
	})

	fieldEnv := func(name, path string) *corev1ac.EnvVarApplyConfiguration {
		return corev1ac.EnvVar().WithName(name).WithValueFrom(corev1ac.EnvVarSource().
			WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath(path)))
	}
	probe := func() *corev1ac.HTTPGetActionApplyConfiguration {
		return corev1ac.HTTPGetAction().WithPath("/healthz/ready").WithPort(intstr.FromInt32(StatusPort)).WithScheme(corev1.URISchemeHTTP)
	}
	container := corev1ac.Container().
		WithName("waypoint").
		WithImage(cfg.Image).
		WithArgs(waypointArgs(gw, cfg)...).
		WithEnv(
			fieldEnv("POD_NAME", "metadata.name"),
			fieldEnv("POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("INSTANCE_IP", "status.podIP"),
			fieldEnv("SERVICE_ACCOUNT", "spec.serviceAccountName"),
			fieldEnv("NODE_NAME", "spec.nodeName"),
			corev1ac.EnvVar().WithName("GATEWAY_NAME").WithValue(name),
		).
		WithPorts(
			corev1ac.ContainerPort().WithName("mesh").WithContainerPort(MeshPort).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName("metrics").WithContainerPort(MetricsPort).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName("status-port").WithContainerPort(StatusPort).WithProtocol(corev1.ProtocolTCP),
		).
		// Istio's probes: start-up checked every second for 30 s, then
		// readiness every 15 s.
		WithStartupProbe(corev1ac.Probe().WithHTTPGet(probe()).
			WithInitialDelaySeconds(1).WithPeriodSeconds(1).WithFailureThreshold(30).WithTimeoutSeconds(1)).
		WithReadinessProbe(corev1ac.Probe().WithHTTPGet(probe()).
			WithPeriodSeconds(15).WithFailureThreshold(4).WithTimeoutSeconds(1)).
		WithSecurityContext(corev1ac.SecurityContext().
			WithPrivileged(false).
			WithRunAsNonRoot(true).WithRunAsUser(1337).WithRunAsGroup(1337).
			WithAllowPrivilegeEscalation(false).
			WithReadOnlyRootFilesystem(true).
			WithCapabilities(corev1ac.Capabilities().WithDrop("ALL"))).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName("istio-token").WithMountPath(tokenDir).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("istiod-ca-cert").WithMountPath(rootDir).WithReadOnly(true),
		)

	pod := corev1ac.PodSpec().
		WithServiceAccountName(name).
		WithContainers(container).
		WithVolumes(
			corev1ac.Volume().WithName("istio-token").WithProjected(corev1ac.ProjectedVolumeSource().
				WithSources(corev1ac.VolumeProjection().WithServiceAccountToken(corev1ac.ServiceAccountTokenProjection().
					WithAudience(TokenAudience).WithExpirationSeconds(tokenExpiry).WithPath(tokenFile)))),
			corev1ac.Volume().WithName("istiod-ca-cert").WithConfigMap(corev1ac.ConfigMapVolumeSource().
				WithName(RootCertConfigMap)),
		)

	deploy := appsv1ac.Deployment(name, ns).
		WithLabels(meta(common)).
		WithOwnerReferences(owner).
		WithSpec(appsv1ac.DeploymentSpec().
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{GatewayNameLabel: name})).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(podLabels).
				WithAnnotations(podAnnotations).
				WithSpec(pod)))
	if len(infraAnnotations) > 0 {
		deploy.WithAnnotations(infraAnnotations)
	}

	svcAnnotations := maps.Clone(infraAnnotations)
	if svcAnnotations == nil {
		svcAnnotations = map[string]string{}
	}
	svcAnnotations["networking.istio.io/traffic-distribution"] = "PreferClose"
	svc := corev1ac.Service(name, ns).
		WithLabels(meta(common)).
		WithAnnotations(svcAnnotations).
		WithOwnerReferences(owner).
		WithSpec(corev1ac.ServiceSpec().
			WithType(corev1.ServiceTypeClusterIP).
			WithIPFamilyPolicy(corev1.IPFamilyPolicyPreferDualStack).
			WithSelector(map[string]string{GatewayNameLabel: name}).
			WithPorts(servicePorts(gw)...))
	return objects{serviceAccount: sa, deployment: deploy, service: svc}
}

// servicePorts are Istio's: the status port 15021 (appProtocol tcp), then
// one port per distinct listener port, named after the listener, with the
// listener's protocol in lower case as appProtocol (hbone for a waypoint's
// mesh listener). A waypoint with a wrong listener is deployed all the
// same, as Istio does; its listener status says what is wrong.
func servicePorts(gw *gatewayv1.Gateway) []*corev1ac.ServicePortApplyConfiguration {
	ports := []*corev1ac.ServicePortApplyConfiguration{
		corev1ac.ServicePort().WithName("status-port").WithPort(StatusPort).
			WithTargetPort(intstr.FromInt32(StatusPort)).WithProtocol(corev1.ProtocolTCP).WithAppProtocol("tcp"),
	}
	seen := map[int32]bool{StatusPort: true}
	for i, l := range gw.Spec.Listeners {
		port := int32(l.Port)
		if seen[port] {
			continue
		}
		seen[port] = true
		name := string(l.Name)
		if name == "" {
			name = fmt.Sprintf("%s-%d", strings.ToLower(string(l.Protocol)), i)
		}
		ports = append(ports, corev1ac.ServicePort().WithName(name).WithPort(port).
			WithTargetPort(intstr.FromInt32(port)).WithProtocol(corev1.ProtocolTCP).
			WithAppProtocol(strings.ToLower(string(l.Protocol))))
	}
	return ports
}

// infrastructure returns the labels and annotations the Gateway asks to
// put on the objects deployed for it (spec.infrastructure).
func infrastructure(gw *gatewayv1.Gateway) (labels, annotations map[string]string) {
	inf := gw.Spec.Infrastructure
	if inf == nil {
		return nil, nil
	}
	if len(inf.Labels) > 0 {
		labels = make(map[string]string, len(inf.Labels))
		for k, v := range inf.Labels {
			labels[string(k)] = string(v)
		}
	}
	if len(inf.Annotations) > 0 {
		annotations = make(map[string]string, len(inf.Annotations))
		for k, v := range inf.Annotations {
			annotations[string(k)] = string(v)
		}
	}
	return labels, annotations
}

// waypointArgs are the waypoint binary's flags (waypoint/cmd/waypoint):
// the Gateway it serves, this pod (from the downward API, expanded by the
// kubelet), where istiod-lite's xDS and CA are, the mesh root and the
// projected token to authenticate with, and the mesh's names.
func waypointArgs(gw *gatewayv1.Gateway, cfg *Config) []string {
	return []string{
		"--namespace=$(POD_NAMESPACE)",
		"--gateway=" + gw.Name,
		"--service-account=$(SERVICE_ACCOUNT)",
		"--pod-name=$(POD_NAME)",
		"--pod-ip=$(INSTANCE_IP)",
		"--xds-address=" + cfg.XDSAddress,
		"--ca-root=" + rootDir + "/" + rootFile,
		"--token-file=" + tokenDir + "/" + tokenFile,
		"--trust-domain=" + cfg.TrustDomain,
		"--cluster-domain=" + cfg.DomainSuffix,
		"--cluster-id=" + cfg.ClusterID,
		fmt.Sprintf("--hbone-addr=:%d", MeshPort),
		fmt.Sprintf("--metrics-addr=:%d", MetricsPort),
		fmt.Sprintf("--readiness-addr=:%d", StatusPort),
	}
}
