package answer

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// stream records what happened to a tunnel.
type stream struct{ log *[]string }

func (s stream) Close() error { *s.log = append(*s.log, "close"); return nil }

// TestOnce: a tunnel is answered once (the first of Accept and Reject
// wins; a second Accept fails with ErrAnswered); Finish answers 503 for a
// handler that gave no answer and closes an accepted stream.
func TestOnce(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []string // accept, reject, accept-error
		want  []string
	}{
		{"no answer", nil, []string{"503"}},
		{"accept", []string{"accept"}, []string{"200", "close"}},
		{"reject", []string{"reject"}, []string{"401"}},
		{"accept twice", []string{"accept", "accept"}, []string{"200", "answered", "close"}},
		{"reject after accept", []string{"accept", "reject"}, []string{"200", "close"}},
		{"accept after reject", []string{"reject", "accept"}, []string{"401", "answered"}},
		{"accept failed", []string{"accept-error"}, []string{"failed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log []string
			var o Once[stream]
			for _, step := range tc.steps {
				switch step {
				case "accept", "accept-error":
					_, err := o.Accept(func() (stream, error) {
						if step == "accept-error" {
							return stream{}, errors.New("failed")
						}
						log = append(log, "200")
						return stream{&log}, nil
					})
					switch {
					case errors.Is(err, ErrAnswered):
						log = append(log, "answered")
					case err != nil:
						log = append(log, err.Error())
					}
				case "reject":
					o.Reject(func() { log = append(log, "401") })
				}
			}
			o.Finish(func() { log = append(log, "503") })
			if diff := cmp.Diff(tc.want, log); diff != "" {
				t.Errorf("answers (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReason(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"dial tcp: refused", "dial tcp: refused"},
		{"line\r\nInjected: yes", "line  Injected: yes"},
		{" \x7fpadded\t", "padded"},
		{strings.Repeat("x", 300), strings.Repeat("x", 256)},
	} {
		if got := Reason(tc.in); got != tc.want {
			t.Errorf("Reason(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
