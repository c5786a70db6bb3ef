package logs

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// Output formats.
const (
	Compact = "compact"
	Dict    = "dict"
	JSON    = "json"
	Table   = "table"
)

// Formats lists the output formats.
var Formats = []string{Compact, Dict, JSON, Table}

// TimeLayout is how records' times print (hubble's).
const TimeLayout = "Jan _2 15:04:05.000"

// Printer writes responses in one format. Call Close at the end (the
// table is aligned over what it holds).
type Printer struct {
	format string
	color  bool
	loc    *time.Location
	w      *bufio.Writer
	tw     *tabwriter.Writer
	n      int
}

// NewPrinter returns a printer of format to w; color adds ANSI colours
// (only for a terminal); loc is the time zone of the times (nil: local).
func NewPrinter(w io.Writer, format string, color bool, loc *time.Location) (*Printer, error) {
	switch format {
	case Compact, Dict, JSON, Table:
	default:
		return nil, fmt.Errorf("unknown output format %q: want one of %s", format, strings.Join(Formats, ", "))
	}
	if loc == nil {
		loc = time.Local
	}
	p := &Printer{format: format, color: color, loc: loc, w: bufio.NewWriter(w)}
	if format == Table {
		p.tw = tabwriter.NewWriter(p.w, 2, 8, 2, ' ', 0)
	}
	return p, nil
}

const (
	red    = "\x1b[31m"
	green  = "\x1b[32m"
	yellow = "\x1b[33m"
	cyan   = "\x1b[36m"
	faint  = "\x1b[2m"
	reset  = "\x1b[0m"
)

func (p *Printer) paint(c, s string) string {
	if !p.color || s == "" {
		return s
	}
	return c + s + reset
}

func (p *Printer) verdict(v logsv1.Verdict) string {
	s := v.String()
	switch v {
	case logsv1.Verdict_ALLOW:
		return p.paint(green, s)
	case logsv1.Verdict_DENY:
		return p.paint(red, s)
	case logsv1.Verdict_ERROR:
		return p.paint(yellow, s)
	}
	return s
}

// Write prints one response; Flush makes it visible (a follower flushes
// after each).
func (p *Printer) Write(r *logsv1.WatchResponse) error {
	var err error
	switch p.format {
	case JSON:
		var b []byte
		if b, err = (protojson.MarshalOptions{UseProtoNames: true}).Marshal(r); err == nil {
			// protojson varies its spacing on purpose; one line, stable.
			var c bytes.Buffer
			if err = json.Compact(&c, b); err == nil {
				c.WriteByte('\n')
				_, err = p.w.Write(c.Bytes())
			}
		}
	case Compact:
		err = p.compact(r)
	case Dict:
		err = p.dict(r)
	case Table:
		err = p.table(r)
	}
	p.n++
	return err
}

// Flush writes what is buffered.
func (p *Printer) Flush() error {
	if p.tw != nil {
		if err := p.tw.Flush(); err != nil {
			return err
		}
	}
	return p.w.Flush()
}

// Close flushes.
func (p *Printer) Close() error { return p.Flush() }

// endpoint prints "namespace/pod (ip:port)", or the address alone.
func endpoint(e *logsv1.Endpoint) string {
	name := e.GetWorkload()
	if name != "" && e.GetNamespace() != "" {
		name = e.GetNamespace() + "/" + name
	}
	switch {
	case name != "" && e.GetAddr() != "":
		return name + " (" + e.GetAddr() + ")"
	case name != "":
		return name
	case e.GetAddr() != "":
		return e.GetAddr()
	}
	return "-"
}

func (p *Printer) when(r *logsv1.Record) string {
	return r.GetTime().AsTime().In(p.loc).Format(TimeLayout)
}

// summary is what happened: HTTP method, path and status, or the bytes
// and duration of a connection, then flags, policy and error.
func summary(r *logsv1.Record) string {
	var b strings.Builder
	if h := r.GetHttp(); h != nil {
		fmt.Fprintf(&b, "%s %s", h.GetMethod(), h.GetPath())
		if h.GetStatus() != 0 {
			fmt.Fprintf(&b, " %d", h.GetStatus())
		}
	} else {
		fmt.Fprintf(&b, "sent %dB recv %dB", r.GetBytesSent(), r.GetBytesRecv())
	}
	fmt.Fprintf(&b, " %s", r.GetDuration().AsDuration().Round(time.Millisecond))
	if f := r.GetResponseFlags(); f != "" && f != "-" {
		fmt.Fprintf(&b, " flags=%s", f)
	}
	if pol := r.GetPolicy(); pol != "" {
		fmt.Fprintf(&b, " policy=%s", pol)
	}
	if e := r.GetError(); e != "" {
		fmt.Fprintf(&b, " error=%q", e)
	}
	return b.String()
}

func direction(d logsv1.Direction) string {
	if d == logsv1.Direction_DIRECTION_UNSPECIFIED {
		return "-"
	}
	return strings.ToLower(d.String())
}

func proxy(r *logsv1.Record) string {
	if r.GetProxyKind() == logsv1.ProxyKind_WAYPOINT {
		return "waypoint " + r.GetProxy()
	}
	return r.GetProxy()
}

func lostLine(l *logsv1.Lost) string {
	where := "the proxy's ring moved past this reader"
	if l.GetSource() == logsv1.Lost_RELAY {
		where = "the relay's buffer was full"
	}
	return fmt.Sprintf("LOST: %d records of %s (%s)", l.GetCount(), l.GetProxy(), where)
}

func statusLine(s *logsv1.ProxyStatus) string {
	kind := strings.ToLower(s.GetProxyKind().String())
	return fmt.Sprintf("PROXY %s: %s %s (instance %s)", s.GetState(), kind, s.GetProxy(), s.GetInstance())
}

func (p *Printer) compact(r *logsv1.WatchResponse) error {
	switch ev := r.Event.(type) {
	case *logsv1.WatchResponse_Record:
		rec := ev.Record
		_, err := fmt.Fprintf(p.w, "%s: %s -> %s %s %s %s %s %s\n",
			p.when(rec),
			p.paint(cyan, endpoint(rec.GetSource())), p.paint(cyan, endpoint(rec.GetDestination())),
			orDash(rec.GetDstService()), p.paint(faint, proxy(rec)), direction(rec.GetDirection()),
			p.verdict(rec.GetVerdict()), summary(rec))
		return err
	case *logsv1.WatchResponse_Lost:
		_, err := fmt.Fprintln(p.w, p.paint(yellow, lostLine(ev.Lost)))
		return err
	case *logsv1.WatchResponse_ProxyStatus:
		_, err := fmt.Fprintln(p.w, p.paint(faint, statusLine(ev.ProxyStatus)))
		return err
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (p *Printer) dict(r *logsv1.WatchResponse) error {
	if p.n > 0 {
		fmt.Fprintln(p.w, "------------")
	}
	kv := func(k, v string) { fmt.Fprintf(p.w, "%14s: %s\n", k, v) }
	switch ev := r.Event.(type) {
	case *logsv1.WatchResponse_Record:
		rec := ev.Record
		kv("TIMESTAMP", p.when(rec))
		kv("PROXY", proxy(rec))
		kv("DIRECTION", direction(rec.GetDirection()))
		kv("SOURCE", p.paint(cyan, endpoint(rec.GetSource())))
		kv("SRC IDENTITY", orDash(rec.GetSource().GetIdentity()))
		kv("DESTINATION", p.paint(cyan, endpoint(rec.GetDestination())))
		kv("DST IDENTITY", orDash(rec.GetDestination().GetIdentity()))
		kv("DST SERVICE", orDash(rec.GetDstService()))
		if a := rec.GetDstHboneAddr(); a != "" {
			kv("DST HBONE", a)
		}
		kv("VERDICT", p.verdict(rec.GetVerdict()))
		kv("SUMMARY", summary(rec))
	case *logsv1.WatchResponse_Lost:
		kv("LOST", fmt.Sprintf("%d records of %s", ev.Lost.GetCount(), ev.Lost.GetProxy()))
	case *logsv1.WatchResponse_ProxyStatus:
		kv("PROXY "+ev.ProxyStatus.GetState().String(), ev.ProxyStatus.GetProxy())
	}
	return nil
}

func (p *Printer) table(r *logsv1.WatchResponse) error {
	if p.n == 0 {
		fmt.Fprintln(p.tw, "TIMESTAMP\tSOURCE\tDESTINATION\tPROXY\tDIRECTION\tVERDICT\tSUMMARY")
	}
	switch ev := r.Event.(type) {
	case *logsv1.WatchResponse_Record:
		rec := ev.Record
		_, err := fmt.Fprintf(p.tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.when(rec),
			endpoint(rec.GetSource()), endpoint(rec.GetDestination()), proxy(rec),
			direction(rec.GetDirection()), p.verdict(rec.GetVerdict()), summary(rec))
		return err
	case *logsv1.WatchResponse_Lost:
		_, err := fmt.Fprintf(p.tw, "%s\n", lostLine(ev.Lost))
		return err
	case *logsv1.WatchResponse_ProxyStatus:
		_, err := fmt.Fprintf(p.tw, "%s\n", statusLine(ev.ProxyStatus))
		return err
	}
	return nil
}
