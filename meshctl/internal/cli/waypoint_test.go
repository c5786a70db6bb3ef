package cli

import (
	"bytes"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func TestGoldenWaypointGenerate(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"waypoint-generate", []string{"waypoint", "generate", "-n", "demo"}},
		{"waypoint-generate-no-namespace", []string{"waypoint", "generate"}},
		{"waypoint-generate-for-workload", []string{"waypoint", "generate", "-n", "demo", "--for", "workload", "--name", "wl-waypoint"}},
		{"waypoint-generate-service-account", []string{"waypoint", "generate", "-n", "demo", "--service-account", "reviews"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := run(t, tc.args...)
			if code != 0 {
				t.Fatalf("meshctl %s: exit %d: %s", strings.Join(tc.args, " "), code, errOut)
			}
			golden(t, tc.name, []byte(out))
		})
	}
}

func TestWaypointGenerateRefuses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"unknown traffic type", []string{"--for", "pods"}, `--for "pods": want one of all, none, service, workload`},
		{"reserved name", []string{"--name", "none"}, `invalid waypoint name "none"`},
		{"name that cannot name a Service", []string{"--name", "Way_point"}, `invalid waypoint name "Way_point"`},
		{"bad service account", []string{"--service-account", "Re views"}, `--service-account "Re views"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := run(t, append([]string{"waypoint", "generate"}, tc.args...)...)
			if code == 0 || !strings.Contains(errOut, tc.wantErr) || out != "" {
				t.Errorf("waypoint generate %v = exit %d, %q, %q; want an error with %q", tc.args, code, out, errOut, tc.wantErr)
			}
		})
	}
}

func TestWaypointApplyRefusesLocalModeAndEnrolledSA(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--istiod", "127.0.0.1:1", "waypoint", "apply", "-n", "demo"}, "waypoint apply works on a cluster"},
		{[]string{"--istiod", "127.0.0.1:1", "waypoint", "list"}, "waypoint list works on a cluster"},
		{[]string{"waypoint", "apply", "--service-account", "reviews", "--enroll-namespace"}, "--enroll-namespace with --service-account"},
		{[]string{"waypoint", "delete"}, "name the waypoints to delete, or --all"},
		{[]string{"waypoint", "delete", "--all", "waypoint"}, "cannot name waypoints and delete --all"},
	} {
		_, errOut, code := run(t, tc.args...)
		if code == 0 || !strings.Contains(errOut, tc.wantErr) {
			t.Errorf("meshctl %v = exit %d, %q; want an error with %q", tc.args, code, errOut, tc.wantErr)
		}
	}
}

// waypointGateways are the Gateways of the list and status goldens: a
// namespace waypoint without waypoint-for (service), one for workloads, a
// per-identity one (all), one not programmed yet, one with no status, and
// a Gateway of another class (not listed).
func waypointGateways() []gatewayv1.Gateway {
	gw := func(ns, name string, labels, annotations map[string]string, conds ...metav1.Condition) gatewayv1.Gateway {
		g := gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: annotations, Generation: 1},
			Spec:       gatewayv1.GatewaySpec{GatewayClassName: waypointClass},
		}
		g.Status.Conditions = conds
		if len(conds) > 0 {
			g.Status.Addresses = []gatewayv1.GatewayStatusAddress{{Type: ptr(gatewayv1.IPAddressType), Value: "10.96.0.20"}}
		}
		return g
	}
	cond := func(typ string, ok bool, reason, msg string) metav1.Condition {
		s := metav1.ConditionTrue
		if !ok {
			s = metav1.ConditionFalse
		}
		return metav1.Condition{Type: typ, Status: s, Reason: reason, Message: msg, ObservedGeneration: 1,
			LastTransitionTime: metav1.NewTime(fixedNow)}
	}
	accepted := cond("Accepted", true, "Accepted", "Resource accepted")
	programmed := cond("Programmed", true, "Programmed", "Resource programmed, assigned to service(s) waypoint.demo.svc.cluster.local:15008")
	notReady := cond("Programmed", false, "AddressNotAssigned", "waiting for a ready waypoint pod")
	return []gatewayv1.Gateway{
		gw("demo", "waypoint", nil, nil, accepted, programmed),
		gw("demo", "wl-waypoint", map[string]string{labelWaypointFor: "workload"}, nil, accepted, programmed),
		gw("demo", "reviews-waypoint", nil, map[string]string{annotationForSA: "reviews"}, accepted, notReady),
		gw("shop", "waypoint", nil, nil),
	}
}

func TestGoldenWaypointList(t *testing.T) {
	gws := waypointGateways()
	classAll := &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: waypointClass, Labels: map[string]string{labelWaypointFor: "all"}}}
	for _, tc := range []struct {
		name   string
		gws    []gatewayv1.Gateway
		class  *gatewayv1.GatewayClass
		all    bool
		format string
	}{
		{name: "waypoint-list", gws: gws[:2]},
		{name: "waypoint-list-all-namespaces", gws: gws, all: true},
		{name: "waypoint-list-class-default", gws: gws, class: classAll, all: true},
		{name: "waypoint-list-json", gws: gws[2:3], format: outJSON},
		{name: "waypoint-list-none", gws: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			rows := waypointRows(tc.gws, tc.class)
			var err error
			if tc.format != "" {
				err = printData(&b, tc.format, rows)
			} else {
				err = renderWaypointList(&b, rows, tc.all)
			}
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, b.Bytes())
		})
	}
}

func TestWaypointTrafficType(t *testing.T) {
	class := func(l map[string]string) *gatewayv1.GatewayClass {
		return &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: waypointClass, Labels: l}}
	}
	for _, tc := range []struct {
		name        string
		labels, ann map[string]string
		class       *gatewayv1.GatewayClass
		want        string
	}{
		{name: "no label: service, never none", want: "service"},
		{name: "the Gateway's label", labels: map[string]string{labelWaypointFor: "workload"}, want: "workload"},
		{name: "an explicit none", labels: map[string]string{labelWaypointFor: "none"}, want: "none"},
		{name: "the class's label", class: class(map[string]string{labelWaypointFor: "workload"}), want: "workload"},
		{name: "the Gateway's label wins over the class's", labels: map[string]string{labelWaypointFor: "service"}, class: class(map[string]string{labelWaypointFor: "all"}), want: "service"},
		{name: "per-identity: all, over the class's", ann: map[string]string{annotationForSA: "reviews"}, class: class(map[string]string{labelWaypointFor: "service"}), want: "all"},
		{name: "per-identity as a label", labels: map[string]string{annotationForSA: "reviews"}, want: "all"},
		{name: "per-identity with its own label", labels: map[string]string{labelWaypointFor: "workload"}, ann: map[string]string{annotationForSA: "reviews"}, want: "workload"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: "w", Labels: tc.labels, Annotations: tc.ann}}
			if got := trafficType(gw, tc.class); got != tc.want {
				t.Errorf("trafficType(labels %v, annotations %v, class %v) = %q, want %q", tc.labels, tc.ann, tc.class, got, tc.want)
			}
		})
	}
}

func TestGoldenWaypointStatus(t *testing.T) {
	gws := waypointGateways()
	for _, tc := range []struct {
		name   string
		gws    []gatewayv1.Gateway
		all    bool
		format string
	}{
		{name: "waypoint-status", gws: gws[:3]},
		{name: "waypoint-status-all-namespaces", gws: gws, all: true},
		{name: "waypoint-status-yaml", gws: gws[:1], format: outYAML},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			sts := waypointStatuses(tc.gws)
			var err error
			if tc.format != "" {
				err = printData(&b, tc.format, sts)
			} else {
				err = renderWaypointStatus(&b, sts, tc.all)
			}
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, b.Bytes())
		})
	}
}

func TestProgrammedState(t *testing.T) {
	cond := func(typ string, s metav1.ConditionStatus, gen int64, reason, msg string) metav1.Condition {
		return metav1.Condition{Type: typ, Status: s, ObservedGeneration: gen, Reason: reason, Message: msg}
	}
	for _, tc := range []struct {
		name      string
		gen       int64
		conds     []metav1.Condition
		wantState string
		wantDone  bool
		wantErr   string
	}{
		{name: "no status", gen: 1, wantState: "Programmed: no status yet"},
		{name: "the Gateway API's pending default", gen: 1,
			conds:     []metav1.Condition{cond("Programmed", metav1.ConditionUnknown, 0, "Pending", "Waiting for controller")},
			wantState: "Programmed=Unknown (Pending): Waiting for controller"},
		{name: "not ready", gen: 1,
			conds:     []metav1.Condition{cond("Accepted", metav1.ConditionTrue, 1, "Accepted", ""), cond("Programmed", metav1.ConditionFalse, 1, "AddressNotAssigned", "no ready pod")},
			wantState: "Programmed=False (AddressNotAssigned): no ready pod"},
		{name: "programmed", gen: 2,
			conds:     []metav1.Condition{cond("Programmed", metav1.ConditionTrue, 2, "Programmed", "")},
			wantState: "Programmed=True", wantDone: true},
		{name: "programmed, for an older generation", gen: 3,
			conds:     []metav1.Condition{cond("Programmed", metav1.ConditionTrue, 2, "Programmed", "")},
			wantState: "Programmed=True for generation 2, waiting for generation 3"},
		{name: "not accepted: never programmed", gen: 1,
			conds:   []metav1.Condition{cond("Accepted", metav1.ConditionFalse, 1, "ListenersNotValid", "bad listener"), cond("Programmed", metav1.ConditionFalse, 1, "Invalid", "")},
			wantErr: "not accepted: ListenersNotValid: bad listener"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Generation: tc.gen}}
			gw.Status.Conditions = tc.conds
			state, done, err := programmedState(gw)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Errorf("programmedState() error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || state != tc.wantState || done != tc.wantDone {
				t.Errorf("programmedState() = %q, %v, %v; want %q, %v, nil", state, done, err, tc.wantState, tc.wantDone)
			}
		})
	}
}
