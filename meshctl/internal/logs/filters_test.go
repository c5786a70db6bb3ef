package logs

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

func TestFiltersRequest(t *testing.T) {
	since := time.Date(2026, 11, 30, 11, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name       string
		args       []string
		namespaces []string
		want       *logsv1.WatchRequest
	}{
		{
			name: "no flags",
			want: &logsv1.WatchRequest{Last: 20},
		},
		{
			name:       "namespace from -n",
			namespaces: []string{"demo"},
			want:       &logsv1.WatchRequest{Last: 20, Whitelist: []*logsv1.Filter{{Namespace: []string{"demo"}}}},
		},
		{
			name: "values of one flag OR'd, flags AND'd (one filter)",
			args: []string{"--from-pod", "demo/client", "--from-pod", "demo/other", "--verdict", "deny", "--port", "9000"},
			want: &logsv1.WatchRequest{Last: 20, Whitelist: []*logsv1.Filter{{
				SourcePod: []string{"demo/client", "demo/other"}, Verdict: []logsv1.Verdict{logsv1.Verdict_DENY}, Port: []uint32{9000},
			}}},
		},
		{
			name: "--not negates only the next flag",
			args: []string{"--to-workload", "echo", "--not", "--http-path", "/healthz", "--http-status", "5+"},
			want: &logsv1.WatchRequest{
				Last:      20,
				Whitelist: []*logsv1.Filter{{DestinationWorkload: []string{"echo"}, HttpStatus: []string{"5+"}}},
				Blacklist: []*logsv1.Filter{{HttpPath: []string{"/healthz"}}},
			},
		},
		{
			name: "every flag",
			args: []string{
				"--pod", "p", "--to-pod", "tp", "--workload", "w", "--from-workload", "fw", "--identity", "i", "--from-identity", "fi", "--to-identity", "ti",
				"--ip", "10.0.0.0/8", "--from-ip", "1.1.1.1", "--to-ip", "2.2.2.2", "--from-namespace", "fn", "--to-namespace", "tn", "--to-service", "echo.demo",
				"--node", "node-a", "--http-method", "GET", "--direction", "Inbound",
			},
			want: &logsv1.WatchRequest{Last: 20, Whitelist: []*logsv1.Filter{{
				Pod: []string{"p"}, DestinationPod: []string{"tp"}, Workload: []string{"w"}, SourceWorkload: []string{"fw"},
				Identity: []string{"i"}, SourceIdentity: []string{"fi"}, DestinationIdentity: []string{"ti"},
				Ip: []string{"10.0.0.0/8"}, SourceIp: []string{"1.1.1.1"}, DestinationIp: []string{"2.2.2.2"},
				SourceNamespace: []string{"fn"}, DestinationNamespace: []string{"tn"}, Service: []string{"echo.demo"},
				Proxy: []string{"node-a"}, HttpMethod: []string{"GET"}, Direction: []logsv1.Direction{logsv1.Direction_INBOUND},
			}}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f Filters
			fs := pflag.NewFlagSet("logs", pflag.ContinueOnError)
			f.AddFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatalf("Parse(%q): %v", tc.args, err)
			}
			got, err := f.Request(tc.namespaces, 20, false, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Request(%q) (-want +got):\n%s", tc.args, diff)
			}
		})
	}
	var f Filters
	got, _ := f.Request(nil, 0, true, since)
	if diff := cmp.Diff(&logsv1.WatchRequest{Follow: true, Since: timestamppb.New(since)}, got, protocmp.Transform()); diff != "" {
		t.Errorf("Request(follow, since) (-want +got):\n%s", diff)
	}
}

func TestFiltersReject(t *testing.T) {
	for _, args := range [][]string{
		{"--verdict", "maybe"},
		{"--direction", "sideways"},
		{"--port", "0"},
		{"--port", "70000"},
	} {
		var f Filters
		fs := pflag.NewFlagSet("logs", pflag.ContinueOnError)
		f.AddFlags(fs)
		if err := fs.Parse(args); err == nil {
			t.Errorf("Parse(%q) = nil, want an error", args)
		}
	}
	var f Filters
	fs := pflag.NewFlagSet("logs", pflag.ContinueOnError)
	f.AddFlags(fs)
	fs.Parse([]string{"--pod", "x", "--not"})
	if _, err := f.Request(nil, 0, false, time.Time{}); err == nil {
		t.Errorf("Request after a trailing --not = nil error, want one")
	}
}
