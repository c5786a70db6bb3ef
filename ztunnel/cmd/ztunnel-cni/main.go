// Command ztunnel-cni is ztunnel's chained CNI plugin (see package
// github.com/ambient-go/mesh/ztunnel/cni). Install it in the runtime's
// CNI_PATH and append it to the network's plugin list:
//
//	{"type": "ztunnel-cni", "zdsSocket": "/var/run/ztunnel/zds.sock",
//	 "podStateDir": "/var/run/ztunnel/pods"}
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/ambient-go/mesh/ztunnel/cni"
)

func main() {
	var p cni.Plugin
	skel.PluginMainFuncs(p.Funcs(), cni.Versions, cni.About)
}
