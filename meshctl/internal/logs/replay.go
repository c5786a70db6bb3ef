package logs

import (
	"bufio"
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ambient-go/mesh/pkg/logstream"
	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// maxLine bounds one JSON line of a saved stream.
const maxLine = 1 << 20

// Replay filters a saved stream (`meshctl logs -o json` output: one
// WatchResponse per line) with req, as a proxy would, and prints it:
// records that match (the last req.Last of them when set) and the
// stream's lost-record and proxy events.
func Replay(in io.Reader, req *logsv1.WatchRequest, p *Printer) error {
	m, err := logstream.Compile(req)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	var kept []*logsv1.WatchResponse
	line := 0
	for sc.Scan() {
		line++
		if len(sc.Bytes()) == 0 {
			continue
		}
		r := &logsv1.WatchResponse{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(sc.Bytes(), r); err != nil {
			return fmt.Errorf("input line %d: %w", line, err)
		}
		if rec := r.GetRecord(); rec != nil && !m.Match(rec) {
			continue
		}
		if req.GetLast() == 0 {
			if err := p.Write(r); err != nil {
				return err
			}
			continue
		}
		kept = append(kept, r)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("input: %w", err)
	}
	// The last N records, with the events among them.
	start, n := len(kept), uint64(0)
	for start > 0 && n < req.GetLast() {
		start--
		if kept[start].GetRecord() != nil {
			n++
		}
	}
	for _, r := range kept[start:] {
		if err := p.Write(r); err != nil {
			return err
		}
	}
	return nil
}
