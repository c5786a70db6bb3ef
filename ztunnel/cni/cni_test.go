package cni

import (
	"testing"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/ambient-go/mesh/ztunnel/zds"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name                string
		in                  string
		wantSocket, wantDir string
		wantPrev            bool
		wantErr             bool
	}{
		{
			name:       "defaults",
			in:         `{"cniVersion":"1.0.0","name":"pods","type":"ztunnel-cni"}`,
			wantSocket: zds.DefaultSocket, wantDir: zds.DefaultStateDir,
		},
		{
			name:       "explicit, chained",
			in:         `{"cniVersion":"1.0.0","name":"pods","type":"ztunnel-cni","zdsSocket":"/s","podStateDir":"/d","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"198.18.7.10/24"}]}}`,
			wantSocket: "/s", wantDir: "/d", wantPrev: true,
		},
		{name: "not JSON", in: `{`, wantErr: true},
		{name: "bad prevResult", in: `{"cniVersion":"1.0.0","prevResult":{"ips":"x"}}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseConfig() error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if c.ZDSSocket != tt.wantSocket || c.PodStateDir != tt.wantDir || (c.PrevResult != nil) != tt.wantPrev {
				t.Errorf("ParseConfig() = socket %q dir %q prev %v, want %q %q %v", c.ZDSSocket, c.PodStateDir, c.PrevResult != nil, tt.wantSocket, tt.wantDir, tt.wantPrev)
			}
		})
	}
}

// TestExcludedNamespacePassesThrough: a pod of an excluded namespace (such
// as ztunnel's own, which starts while no ztunnel runs) is not sent to
// ztunnel; others are.
func TestExcludedNamespacePassesThrough(t *testing.T) {
	conf, err := ParseConfig([]byte(`{"cniVersion":"1.0.0","name":"pods","type":"ztunnel-cni","excludeNamespaces":["istio-system","kube-system"]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		namespace string
		wantPod   bool
	}{{"istio-system", false}, {"kube-system", false}, {"demo", true}} {
		args := &skel.CmdArgs{Netns: "/var/run/netns/p", Args: "K8S_POD_NAME=p;K8S_POD_NAMESPACE=" + tc.namespace + ";K8S_POD_UID=u"}
		_, isPod, err := pod(args, conf)
		if err != nil || isPod != tc.wantPod {
			t.Errorf("pod(namespace %s) = %v, %v; want %v, nil", tc.namespace, isPod, err, tc.wantPod)
		}
	}
}
