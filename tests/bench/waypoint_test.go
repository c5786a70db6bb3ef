package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestSumMetric(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       float64
		wantErr    bool
	}{
		{name: "none", text: "# HELP x\nistio_requests_total_other 5\n", want: 0},
		{
			name: "series summed, other metrics and comments skipped",
			text: `# HELP istio_requests_total Requests.
# TYPE istio_requests_total counter
istio_requests_total{reporter="waypoint",response_code="200",source_workload="a{b}"} 1200
istio_requests_total{reporter="waypoint",response_code="403"} 3
istio_request_duration_milliseconds_bucket{le="1"} 99
istio_requests_totalx 7
`,
			want: 1203,
		},
		{name: "no labels", text: "istio_requests_total 4.5e3\n", want: 4500},
		{name: "bad value", text: "istio_requests_total{a=\"b\"} x\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SumMetric([]byte(tc.text), "istio_requests_total")
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("SumMetric() = %v, %v; want %v (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestRelay relays to the echo application and checks that bytes pass
// both ways, that half-close passes through, and that Close ends open
// relayed connections (goleak checks the goroutines).
func TestRelay(t *testing.T) {
	host := fmt.Sprintf("127.%d.%d.%d", 30+rand.IntN(190), 150+rand.IntN(50), 1+rand.IntN(250))
	apps, err := StartApps(host)
	if err != nil {
		t.Fatalf("StartApps(%s): %v", host, err)
	}
	defer apps.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := NewRelay(l, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", net.JoinHostPort(host, fmt.Sprint(EchoPort)))
	})
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := closeWrite(c); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "ping" {
		t.Errorf("echo through the relay after half-close = %q, %v; want \"ping\" then EOF", got, err)
	}
	open, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	open.SetDeadline(time.Now().Add(5 * time.Second))
	open.Write([]byte("x"))
	io.ReadFull(open, make([]byte, 1))
	if err := r.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if n, err := open.Read(make([]byte, 1)); err == nil {
		t.Errorf("relayed connection still open after Close (read %d bytes)", n)
	}
}

func TestPeakRSS(t *testing.T) {
	stop := PeakRSS([]*Process{External("self", os.Getpid()), External("gone", 1<<30)}, 10*time.Millisecond)
	time.Sleep(30 * time.Millisecond)
	got := stop()
	if got[0] <= 0 || got[1] != 0 {
		t.Errorf("PeakRSS(self, missing) = %v, want [>0 0]", got)
	}
}

func TestParsePerfStat(t *testing.T) {
	events := []string{"raw_syscalls:sys_enter", "context-switches"}
	for _, tc := range []struct {
		name    string
		out     string
		want    map[string]float64
		wantErr bool
	}{
		{
			name: "both counted",
			out:  "109,,raw_syscalls:sys_enter,800944,100.00,,\n12,,context-switches,800944,100.00,,\n",
			want: map[string]float64{"raw_syscalls:sys_enter": 109, "context-switches": 12},
		},
		{name: "not counted", out: "<not counted>,,raw_syscalls:sys_enter,0,0.00,,\n3,,context-switches,1,100.00,,\n", wantErr: true},
		{name: "empty", out: "", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parsePerfStat([]byte(tc.out), events)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parsePerfStat() error = %v, want error %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" && !tc.wantErr {
				t.Errorf("parsePerfStat() (-want +got):\n%s", diff)
			}
		})
	}
}
