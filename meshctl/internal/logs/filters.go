// Package logs is `meshctl logs` apart from its command: the filter flags
// with hubble's semantics, turned into a logsv1.WatchRequest, and the
// printers of the records (compact, dict, json, table).
package logs

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// Filters collects the filter flags in command-line order, as hubble does:
// values of one flag are OR'd, different flags AND'd, and --not turns the
// next filter flag into an exclusion.
type Filters struct {
	white, black logsv1.Filter
	negateNext   bool
	err          error
}

// AddFlags registers the filter flags on fs.
func (f *Filters) AddFlags(fs *pflag.FlagSet) {
	str := func(name, usage string, field func(*logsv1.Filter) *[]string) {
		fs.Var(&filterValue{f: f, set: func(flt *logsv1.Filter, v string) error {
			p := field(flt)
			*p = append(*p, v)
			return nil
		}}, name, usage)
	}
	str("pod", "pod at either end ([namespace/]pod)", func(x *logsv1.Filter) *[]string { return &x.Pod })
	str("from-pod", "source pod ([namespace/]pod)", func(x *logsv1.Filter) *[]string { return &x.SourcePod })
	str("to-pod", "destination pod ([namespace/]pod)", func(x *logsv1.Filter) *[]string { return &x.DestinationPod })
	str("workload", "workload (Deployment) or pod at either end ([namespace/]name)", func(x *logsv1.Filter) *[]string { return &x.Workload })
	str("from-workload", "source workload ([namespace/]name)", func(x *logsv1.Filter) *[]string { return &x.SourceWorkload })
	str("to-workload", "destination workload ([namespace/]name)", func(x *logsv1.Filter) *[]string { return &x.DestinationWorkload })
	str("identity", "SPIFFE identity at either end (spiffe://td/ns/N/sa/S, or ns/N/sa/S)", func(x *logsv1.Filter) *[]string { return &x.Identity })
	str("from-identity", "source identity", func(x *logsv1.Filter) *[]string { return &x.SourceIdentity })
	str("to-identity", "destination identity", func(x *logsv1.Filter) *[]string { return &x.DestinationIdentity })
	str("ip", "IP or CIDR at either end", func(x *logsv1.Filter) *[]string { return &x.Ip })
	str("from-ip", "source IP or CIDR", func(x *logsv1.Filter) *[]string { return &x.SourceIp })
	str("to-ip", "destination IP or CIDR", func(x *logsv1.Filter) *[]string { return &x.DestinationIp })
	str("from-namespace", "source namespace", func(x *logsv1.Filter) *[]string { return &x.SourceNamespace })
	str("to-namespace", "destination namespace", func(x *logsv1.Filter) *[]string { return &x.DestinationNamespace })
	str("to-service", "destination service (hostname, or a prefix such as echo.demo)", func(x *logsv1.Filter) *[]string { return &x.Service })
	str("node", "records of this node's ztunnel, or of this waypoint (namespace/pod)", func(x *logsv1.Filter) *[]string { return &x.Proxy })
	str("http-method", "HTTP method (waypoint records)", func(x *logsv1.Filter) *[]string { return &x.HttpMethod })
	str("http-path", "HTTP path, RE2 matched from the start (waypoint records)", func(x *logsv1.Filter) *[]string { return &x.HttpPath })
	str("http-status", `HTTP status: a code ("404") or a class ("5+") (waypoint records)`, func(x *logsv1.Filter) *[]string { return &x.HttpStatus })
	fs.Var(&filterValue{f: f, set: func(flt *logsv1.Filter, v string) error {
		n, ok := logsv1.Verdict_value[strings.ToUpper(v)]
		if !ok || n == 0 {
			return fmt.Errorf("verdict %q: want ALLOW, DENY or ERROR", v)
		}
		flt.Verdict = append(flt.Verdict, logsv1.Verdict(n))
		return nil
	}}, "verdict", "ALLOW, DENY (refused by policy) or ERROR")
	fs.Var(&filterValue{f: f, set: func(flt *logsv1.Filter, v string) error {
		n, ok := logsv1.Direction_value[strings.ToUpper(v)]
		if !ok || n == 0 {
			return fmt.Errorf("direction %q: want inbound or outbound", v)
		}
		flt.Direction = append(flt.Direction, logsv1.Direction(n))
		return nil
	}}, "direction", "inbound or outbound (as the proxy that logged it saw it)")
	fs.Var(&filterValue{f: f, set: func(flt *logsv1.Filter, v string) error {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("port %q: want 1-65535", v)
		}
		flt.Port = append(flt.Port, uint32(n))
		return nil
	}}, "port", "destination port")
	not := fs.VarPF(&notValue{f: f}, "not", "", "exclude what the next filter flag matches")
	not.NoOptDefVal = "true"
}

// Request builds the WatchRequest of the flags. namespaces restricts
// records to those with an end in one of them (none: every namespace).
func (f *Filters) Request(namespaces []string, last uint64, follow bool, since time.Time) (*logsv1.WatchRequest, error) {
	if f.negateNext {
		return nil, fmt.Errorf("--not must be followed by a filter flag")
	}
	req := &logsv1.WatchRequest{Last: last, Follow: follow}
	if !since.IsZero() {
		req.Since = timestamppb.New(since)
	}
	white := cloneFilter(&f.white)
	white.Namespace = append(white.Namespace, namespaces...)
	if !empty(white) {
		req.Whitelist = []*logsv1.Filter{white}
	}
	if !empty(&f.black) {
		req.Blacklist = []*logsv1.Filter{cloneFilter(&f.black)}
	}
	return req, nil
}

// HasNamespaceFilter says whether a flag named a source or destination
// namespace (then -n's default does not apply).
func (f *Filters) HasNamespaceFilter() bool {
	return len(f.white.SourceNamespace) > 0 || len(f.white.DestinationNamespace) > 0
}

func cloneFilter(x *logsv1.Filter) *logsv1.Filter { return proto.Clone(x).(*logsv1.Filter) }

func empty(x *logsv1.Filter) bool {
	return len(x.Namespace)+len(x.SourceNamespace)+len(x.DestinationNamespace)+
		len(x.Pod)+len(x.SourcePod)+len(x.DestinationPod)+
		len(x.Workload)+len(x.SourceWorkload)+len(x.DestinationWorkload)+
		len(x.Identity)+len(x.SourceIdentity)+len(x.DestinationIdentity)+
		len(x.Ip)+len(x.SourceIp)+len(x.DestinationIp)+
		len(x.Service)+len(x.Direction)+len(x.Verdict)+len(x.Port)+
		len(x.HttpMethod)+len(x.HttpPath)+len(x.HttpStatus)+len(x.Proxy)+len(x.ProxyKind) == 0
}

// filterValue is one filter flag: each occurrence adds its value to the
// whitelist filter, or to the blacklist one right after --not.
type filterValue struct {
	f    *Filters
	set  func(*logsv1.Filter, string) error
	vals []string
}

func (v *filterValue) String() string { return strings.Join(v.vals, ",") }
func (v *filterValue) Type() string   { return "filter" }
func (v *filterValue) Set(s string) error {
	target := &v.f.white
	if v.f.negateNext {
		target, v.f.negateNext = &v.f.black, false
	}
	v.vals = append(v.vals, s)
	return v.set(target, s)
}

type notValue struct{ f *Filters }

func (v *notValue) String() string { return "false" }
func (v *notValue) Type() string   { return "bool" }
func (v *notValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	v.f.negateNext = b
	return nil
}
