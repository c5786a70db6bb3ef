package images

// The mesh's images. Every one runs as the non-root user istio-proxy
// (1337:1337, Istio's proxy UID); ztunnel needs root and capabilities on
// the node, which its DaemonSet grants explicitly (runAsUser: 0,
// privileged), as Istio's ztunnel chart does.
const module = "github.com/ambient-go/mesh"

// Mesh returns the images that `make images` builds: istiod-lite, ztunnel
// (with the CNI plugin and its installer), waypoint and meshctl.
func Mesh() []Image {
	return []Image{
		{
			Name:       "istiod-lite",
			Binaries:   []Binary{{Package: module + "/istiod-lite/cmd/istiod-lite"}},
			Entrypoint: []string{BinDir + "/istiod-lite"},
			// The API server's CA comes with the ServiceAccount mount, but a
			// remote cluster or a JWKS endpoint needs public roots.
			CACerts: true,
		},
		{
			Name: "ztunnel",
			Binaries: []Binary{
				{Package: module + "/ztunnel/cmd/ztunnel"},
				{Package: module + "/ztunnel/cmd/ztunnel-cni"},
				{Package: module + "/ztunnel/cmd/install-cni"},
			},
			Entrypoint: []string{BinDir + "/ztunnel"},
		},
		{
			Name:       "waypoint",
			Binaries:   []Binary{{Package: module + "/waypoint/cmd/waypoint"}},
			Entrypoint: []string{BinDir + "/waypoint"},
		},
		{
			Name:       "meshctl",
			Binaries:   []Binary{{Package: module + "/meshctl/cmd/meshctl"}},
			Entrypoint: []string{BinDir + "/meshctl"},
			// meshctl talks to API servers that may present public certificates.
			CACerts: true,
		},
	}
}

// ConformanceEcho is the image of tests/cmd/echo, standing in for the
// Gateway API conformance suite's echo (registry.k8s.io/gateway-api/echo-advanced):
// the server as entrypoint, and the same binary as client, the command
// the suite execs in its pods. It runs as istio-proxy like the mesh's.
func ConformanceEcho() Image {
	return Image{
		Name: "conformance-echo",
		Binaries: []Binary{
			{Package: module + "/tests/cmd/echo"},
			{Package: module + "/tests/cmd/echo", Path: BinDir + "/client"},
		},
		Entrypoint: []string{BinDir + "/echo"},
	}
}
