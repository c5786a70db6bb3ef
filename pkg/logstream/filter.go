package logstream

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// Matcher decides which records a WatchRequest wants, with hubble's
// semantics: a record is wanted when it matches any whitelist filter (or
// there is none) and no blacklist filter; a filter matches when all of its
// set fields match; a field matches when any of its values does.
type Matcher struct {
	white, black []matchFunc
	since        *timestamppb.Timestamp
}

type matchFunc func(*logsv1.Record) bool

// Compile builds the Matcher of req; an invalid value (a path that is not
// RE2, a status that is neither "404" nor "4+", an IP that does not parse)
// is an error.
func Compile(req *logsv1.WatchRequest) (*Matcher, error) {
	m := &Matcher{since: req.GetSince()}
	for _, f := range req.GetWhitelist() {
		fn, err := compileFilter(f)
		if err != nil {
			return nil, err
		}
		m.white = append(m.white, fn)
	}
	for _, f := range req.GetBlacklist() {
		fn, err := compileFilter(f)
		if err != nil {
			return nil, err
		}
		m.black = append(m.black, fn)
	}
	return m, nil
}

// Match reports whether r is wanted.
func (m *Matcher) Match(r *logsv1.Record) bool {
	if m.since != nil && r.GetTime().AsTime().Before(m.since.AsTime()) {
		return false
	}
	if len(m.white) > 0 && !slices.ContainsFunc(m.white, func(f matchFunc) bool { return f(r) }) {
		return false
	}
	return !slices.ContainsFunc(m.black, func(f matchFunc) bool { return f(r) })
}

// Namespaces returns the namespaces a record must be in (either end) to
// match: nil when the whitelist does not restrict them. The relay uses it
// to check the caller's rights before it asks any proxy.
func Namespaces(req *logsv1.WatchRequest) []string {
	if len(req.GetWhitelist()) == 0 {
		return nil
	}
	var out []string
	for _, f := range req.GetWhitelist() {
		ns := filterNamespaces(f)
		if ns == nil {
			return nil
		}
		out = append(out, ns...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// filterNamespaces is the namespaces f restricts records to, or nil.
func filterNamespaces(f *logsv1.Filter) []string {
	switch {
	case len(f.Namespace) > 0:
		return f.Namespace
	case len(f.SourceNamespace) > 0:
		return f.SourceNamespace
	case len(f.DestinationNamespace) > 0:
		return f.DestinationNamespace
	}
	return nil
}

func compileFilter(f *logsv1.Filter) (matchFunc, error) {
	var all []matchFunc
	add := func(fn matchFunc) { all = append(all, fn) }
	either := func(vals []string, match func(*logsv1.Endpoint, string) bool) {
		if len(vals) > 0 {
			add(func(r *logsv1.Record) bool {
				return slices.ContainsFunc(vals, func(v string) bool { return match(r.Source, v) || match(r.Destination, v) })
			})
		}
	}
	end := func(vals []string, side func(*logsv1.Record) *logsv1.Endpoint, match func(*logsv1.Endpoint, string) bool) {
		if len(vals) > 0 {
			add(func(r *logsv1.Record) bool {
				return slices.ContainsFunc(vals, func(v string) bool { return match(side(r), v) })
			})
		}
	}
	src := (*logsv1.Record).GetSource
	dst := (*logsv1.Record).GetDestination

	either(f.Namespace, matchNamespace)
	end(f.SourceNamespace, src, matchNamespace)
	end(f.DestinationNamespace, dst, matchNamespace)
	either(f.Pod, matchPod)
	end(f.SourcePod, src, matchPod)
	end(f.DestinationPod, dst, matchPod)
	either(f.Workload, matchWorkload)
	end(f.SourceWorkload, src, matchWorkload)
	end(f.DestinationWorkload, dst, matchWorkload)
	either(f.Identity, matchIdentity)
	end(f.SourceIdentity, src, matchIdentity)
	end(f.DestinationIdentity, dst, matchIdentity)
	for _, ips := range [][]string{f.Ip, f.SourceIp, f.DestinationIp} {
		for _, v := range ips {
			if _, err := parsePrefix(v); err != nil {
				return nil, fmt.Errorf("ip %q: %w", v, err)
			}
		}
	}
	either(f.Ip, matchIP)
	end(f.SourceIp, src, matchIP)
	end(f.DestinationIp, dst, matchIP)
	if vals := f.Service; len(vals) > 0 {
		add(func(r *logsv1.Record) bool {
			return slices.ContainsFunc(vals, func(v string) bool {
				return r.DstService == v || strings.HasPrefix(r.DstService, v+".")
			})
		})
	}
	if vals := f.Direction; len(vals) > 0 {
		add(func(r *logsv1.Record) bool { return slices.Contains(vals, r.Direction) })
	}
	if vals := f.Verdict; len(vals) > 0 {
		add(func(r *logsv1.Record) bool { return slices.Contains(vals, r.Verdict) })
	}
	if vals := f.Port; len(vals) > 0 {
		add(func(r *logsv1.Record) bool {
			return slices.ContainsFunc([]string{r.GetDestination().GetAddr(), r.DstHboneAddr}, func(a string) bool {
				ap, err := netip.ParseAddrPort(a)
				return err == nil && slices.Contains(vals, uint32(ap.Port()))
			})
		})
	}
	if vals := f.HttpMethod; len(vals) > 0 {
		add(func(r *logsv1.Record) bool {
			return r.Http != nil && slices.ContainsFunc(vals, func(v string) bool { return strings.EqualFold(v, r.Http.Method) })
		})
	}
	if len(f.HttpPath) > 0 {
		var res []*regexp.Regexp
		for _, v := range f.HttpPath {
			re, err := regexp.Compile("^(?:" + v + ")")
			if err != nil {
				return nil, fmt.Errorf("http path %q: %w", v, err)
			}
			res = append(res, re)
		}
		add(func(r *logsv1.Record) bool {
			return r.Http != nil && slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(r.Http.Path) })
		})
	}
	if len(f.HttpStatus) > 0 {
		var ranges [][2]uint32
		for _, v := range f.HttpStatus {
			lo, hi, err := parseStatus(v)
			if err != nil {
				return nil, err
			}
			ranges = append(ranges, [2]uint32{lo, hi})
		}
		add(func(r *logsv1.Record) bool {
			return r.Http != nil && slices.ContainsFunc(ranges, func(rg [2]uint32) bool { return r.Http.Status >= rg[0] && r.Http.Status <= rg[1] })
		})
	}
	if vals := f.Proxy; len(vals) > 0 {
		add(func(r *logsv1.Record) bool { return slices.Contains(vals, r.Proxy) })
	}
	if vals := f.ProxyKind; len(vals) > 0 {
		add(func(r *logsv1.Record) bool { return slices.Contains(vals, r.ProxyKind) })
	}
	return func(r *logsv1.Record) bool {
		for _, fn := range all {
			if !fn(r) {
				return false
			}
		}
		return true
	}, nil
}

func matchNamespace(e *logsv1.Endpoint, v string) bool { return e.GetNamespace() == v }

// matchPod matches "pod" or "namespace/pod".
func matchPod(e *logsv1.Endpoint, v string) bool {
	if ns, pod, ok := strings.Cut(v, "/"); ok {
		return e.GetNamespace() == ns && e.GetWorkload() == pod
	}
	return e.GetWorkload() != "" && e.GetWorkload() == v
}

// matchWorkload matches the workload (Deployment) name, or the pod's,
// optionally as "namespace/name".
func matchWorkload(e *logsv1.Endpoint, v string) bool {
	if ns, name, ok := strings.Cut(v, "/"); ok {
		if e.GetNamespace() != ns {
			return false
		}
		v = name
	}
	return v != "" && (e.GetApp() == v || e.GetWorkload() == v)
}

// matchIdentity matches a SPIFFE ID, with or without the scheme and trust
// domain ("ns/demo/sa/client").
func matchIdentity(e *logsv1.Endpoint, v string) bool {
	id := e.GetIdentity()
	if id == "" || v == "" {
		return false
	}
	return id == v || id == Identity(v) || strings.HasSuffix(id, "/"+strings.TrimPrefix(v, "/"))
}

func matchIP(e *logsv1.Endpoint, v string) bool {
	p, err := parsePrefix(v)
	if err != nil {
		return false
	}
	ap, err := netip.ParseAddrPort(e.GetAddr())
	return err == nil && p.Contains(ap.Addr())
}

// parsePrefix parses an IP address or a CIDR prefix.
func parsePrefix(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		return netip.ParsePrefix(v)
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// parseStatus parses "404" or a class "4+" into an inclusive range.
func parseStatus(v string) (lo, hi uint32, err error) {
	if c, ok := strings.CutSuffix(v, "+"); ok && len(c) == 1 && c[0] >= '1' && c[0] <= '5' {
		lo = uint32(c[0]-'0') * 100
		return lo, lo + 99, nil
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n < 100 || n > 599 {
		return 0, 0, fmt.Errorf("http status %q: want a code (404) or a class (4+)", v)
	}
	return uint32(n), uint32(n), nil
}
