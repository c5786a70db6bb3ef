package ztunnel

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestReservedPorts(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []uint16
	}{
		{"defaults", Config{HBONEPort: 15008, SOCKSPort: 15080}, []uint16{15000, 15001, 15006, 15008, 15020, 15021, 15080}},
		{"configured ports are added", Config{
			HBONEPort: 16008, SOCKSPort: 16080,
			AdminAddr: "127.0.0.1:16000", MetricsAddr: ":16020", ReadinessAddr: "[::]:16021",
		}, []uint16{15000, 15001, 15006, 15008, 15020, 15021, 15080, 16000, 16008, 16020, 16021, 16080}},
		{"kernel-picked ports are unknown", Config{
			HBONEPort: 15008, SOCKSPort: 15080,
			AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadinessAddr: "127.0.0.1:0",
		}, []uint16{15000, 15001, 15006, 15008, 15020, 15021, 15080}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, reservedPorts(tc.cfg)); diff != "" {
				t.Errorf("reservedPorts() (-want +got):\n%s", diff)
			}
		})
	}
}
