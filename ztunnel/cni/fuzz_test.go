package cni

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
)

// FuzzParseConfig decodes any network configuration the runtime could put
// on stdin, with any CNI_ARGS, as ADD does before it talks to ztunnel.
// Property: no panic; input that is not a JSON object is an error; an
// accepted configuration has the socket and state directory set; a pod
// built from it has a name and only valid addresses; printing prevResult
// does not panic.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []struct{ conf, args string }{
		{`{"cniVersion":"1.0.0","name":"pods","type":"ztunnel-cni"}`, ""},
		{`{"cniVersion":"1.0.0","name":"pods","type":"ztunnel-cni","zdsSocket":"/s","podStateDir":"/d","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"198.18.7.10/24"},{"address":"fd00::7/64"}]}}`,
			"K8S_POD_NAME=a;K8S_POD_NAMESPACE=demo;K8S_POD_UID=u1;IgnoreUnknown=1"},
		{`{"cniVersion":"0.4.0","name":"pods","type":"ztunnel-cni","prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.1/24"}]}}`,
			"K8S_POD_NAME=a;K8S_POD_NAMESPACE=demo"},
		{`{"cniVersion":"0.3.1","prevResult":{"ips":[{"address":"::ffff:10.0.0.1/128"}]}}`, "K8S_POD_NAME=a"},
		{`{"cniVersion":"0.2.0","prevResult":{"ip4":{"ip":"10.0.0.1/24"}}}`, "K8S_POD_NAME=a;X=y"},
		{`{"cniVersion":"9.9.9","prevResult":{}}`, "K8S_POD_NAME="},
		{`{"cniVersion":"1.0.0","prevResult":{"ips":"x"}}`, ""},
		{`{"cniVersion":"1.0.0","prevResult":null}`, "=;;="},
		{`{`, ""},
		{`[]`, ""},
		{`null`, ""},
	} {
		f.Add([]byte(s.conf), s.args)
	}
	f.Fuzz(func(t *testing.T, stdin []byte, args string) {
		conf, err := ParseConfig(stdin)
		var obj map[string]json.RawMessage
		if json.Unmarshal(stdin, &obj) != nil && err == nil {
			t.Fatalf("ParseConfig(%q) accepted what is not a JSON object", stdin)
		}
		if err != nil {
			if conf != nil {
				t.Errorf("ParseConfig(%q) = %+v with error %v", stdin, conf, err)
			}
			return
		}
		if conf.ZDSSocket == "" || conf.PodStateDir == "" {
			t.Errorf("ParseConfig(%q) left socket %q and state directory %q unset", stdin, conf.ZDSSocket, conf.PodStateDir)
		}
		pd, isPod, err := pod(&skel.CmdArgs{Args: args, Netns: "/var/run/netns/x", StdinData: stdin}, conf)
		if err == nil && isPod {
			if pd.Name == "" {
				t.Errorf("pod(%q, %q) = a pod with no name", args, stdin)
			}
			for _, a := range pd.IPs {
				if !a.IsValid() || a.Is4In6() {
					t.Errorf("pod(%q, %q) has address %v", args, stdin, a)
				}
			}
		}
		if conf.PrevResult != nil {
			p := &Plugin{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}}
			_ = p.print(conf)
		}
	})
}
