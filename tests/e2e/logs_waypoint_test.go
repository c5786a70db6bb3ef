package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// TestMeshctlLogsWaypoint: the waypoint's per-request records reach
// `meshctl logs`, filtered by HTTP method, path and status.
func TestMeshctlLogsWaypoint(t *testing.T) {
	if testing.Short() {
		t.Skip("builds meshctl")
	}
	w := newWaypointMesh(t)
	writeLogsToken(t, w.Mesh)
	wp := w.StartWaypoint("node-a", "demo", "waypoint")
	w.labelNamespace(map[string]string{"istio.io/use-waypoint": "waypoint"})
	w.waitVia(t, wp, w.url(w.echoVIP, 80, "/ready"))

	for _, path := range []string{"/logs/1", "/logs/2", "/other"} {
		if r := w.get(t, w.url(w.echoVIP, 80, path)); r.status != http.StatusOK {
			t.Fatalf("GET %s = %d", path, r.status)
		}
	}
	// The records are kept by the waypoint: ask for them without -f.
	eventually(t, 10*time.Second, "the waypoint's records of /logs", func() error {
		m := startLogs(t, w.IstiodAddr(), false, "-n", "demo", "--last", "10",
			"--http-method", "GET", "--http-path", "/logs/", "--http-status", "2+")
		var paths []string
		for r := range m.out {
			rec := r.GetRecord()
			if rec == nil {
				continue
			}
			if rec.GetProxyKind() != logsv1.ProxyKind_WAYPOINT || rec.GetProxy() != "demo/"+wp.Spec.PodName() ||
				rec.GetHttp().GetStatus() != http.StatusOK || rec.GetSource().GetNamespace() != "demo" {
				t.Errorf("record %v: want a 200 request through waypoint demo/%s", rec, wp.Spec.PodName())
			}
			paths = append(paths, rec.GetHttp().GetPath())
		}
		if len(paths) != 2 || paths[0] != "/logs/1" || paths[1] != "/logs/2" {
			return fmt.Errorf("paths %q, want /logs/1 and /logs/2", paths)
		}
		return nil
	})
}
