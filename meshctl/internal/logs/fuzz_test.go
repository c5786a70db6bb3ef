package logs

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// replay runs Replay of in with req into a printer of format.
func replay(in []byte, req *logsv1.WatchRequest, format string, color bool) (string, error) {
	var out bytes.Buffer
	p, err := NewPrinter(&out, format, color, time.UTC)
	if err != nil {
		return "", err
	}
	err = Replay(bytes.NewReader(in), req, p)
	if cerr := p.Close(); err == nil {
		err = cerr
	}
	return out.String(), err
}

// FuzzReplay: any bytes as `meshctl logs --input-file`, with a namespace
// filter (empty: none), --last, and an output format.
//
// Properties: an error or a result, never a panic; what Replay prints as
// JSON is one WatchResponse per line, no more lines than the input had
// and no more records than --last; replaying its own JSON output gives
// the same output (filters and --last are idempotent); the output with
// --last is the tail of the output without it; every format fails or
// succeeds as JSON does.
func FuzzReplay(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte, ns string, last uint8, format uint8) {
		req := &logsv1.WatchRequest{Last: uint64(last)}
		if ns != "" {
			req.Whitelist = []*logsv1.Filter{{Namespace: []string{ns}}}
		}
		out, err := replay(in, req, JSON, false)
		other := Formats[int(format)%len(Formats)]
		if _, oerr := replay(in, req, other, format&4 != 0); (oerr == nil) != (err == nil) {
			t.Fatalf("Replay as %s: %v; as json: %v", other, oerr, err)
		}
		if err != nil {
			return
		}
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if out == "" {
			lines = nil
		}
		nonEmpty := 0
		for l := range bytes.Lines(in) {
			if len(bytes.TrimSuffix(bytes.TrimSuffix(l, []byte("\n")), []byte("\r"))) > 0 {
				nonEmpty++
			}
		}
		if len(lines) > nonEmpty {
			t.Fatalf("%d lines printed from %d input lines", len(lines), nonEmpty)
		}
		records := 0
		for _, l := range lines {
			r := &logsv1.WatchResponse{}
			if err := protojson.Unmarshal([]byte(l), r); err != nil {
				t.Fatalf("printed line %q does not parse: %v", l, err)
			}
			if r.GetRecord() != nil {
				records++
				if ns != "" && r.GetRecord().GetSource().GetNamespace() != ns && r.GetRecord().GetDestination().GetNamespace() != ns {
					t.Fatalf("record %q printed with namespace filter %q", l, ns)
				}
			}
		}
		if last > 0 && records > int(last) {
			t.Fatalf("%d records printed with --last %d", records, last)
		}
		again, err := replay([]byte(out), req, JSON, false)
		if err != nil || again != out {
			t.Fatalf("replaying the output: %v\n%s\nwant\n%s", err, again, out)
		}
		if last > 0 {
			all, err := replay(in, &logsv1.WatchRequest{Whitelist: req.Whitelist}, JSON, false)
			if err != nil || !strings.HasSuffix(all, out) {
				t.Fatalf("output with --last %d:\n%s\nis not the tail of the output without it (%v):\n%s", last, out, err, all)
			}
		}
	})
}
