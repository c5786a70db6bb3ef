package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ambient-go/mesh/meshctl/internal/logs"
	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// defaultLast is how many records meshctl logs prints without -f or
// --last, as hubble observe.
const defaultLast = 20

// logsOptions are meshctl logs' own flags.
type logsOptions struct {
	filters logs.Filters
	follow  bool
	last    uint64
	since   string
	output  string
	color   string
	input   string
}

func newLogsCmd(o *Options) *cobra.Command {
	lo := &logsOptions{}
	cmd := &cobra.Command{
		Use:   "logs",
		Short: "Show and follow the access logs of every ztunnel and waypoint",
		Long: `logs shows the access-log records of every ztunnel (one per connection) and
waypoint (one per request) of the mesh, merged in time order by istiod-lite's
relay, as hubble observe does for Cilium. Filters are applied by the proxies:
values of one flag are OR'd, different flags AND'd, and --not excludes what
the next filter flag matches.

Without -f it prints the last records kept (--last, default 20); with -f it
follows new ones. A reader too slow for the mesh loses records and is told
how many (LOST lines). In a cluster, only namespaces where you may
"get pods/log" can be read; -n defaults to the context's namespace, -A
reads every namespace you may. In local mode (--istiod) every namespace is
read unless -n is given.`,
		Example: `  # follow every connection and request of namespace demo
  meshctl logs -f -n demo

  # the last 100 denied connections of the whole mesh, as JSON
  meshctl logs -A --last 100 --verdict DENY -o json

  # requests to echo answered 5xx, but not health checks
  meshctl logs -n demo --to-workload echo --http-status 5+ --not --http-path /healthz

  # filter a saved stream offline
  meshctl logs -o json -A --last 1000 > saved.json
  meshctl logs --input-file saved.json --from-pod demo/client`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runLogs(cmd.Context(), o, lo) },
	}
	f := cmd.Flags()
	f.BoolVarP(&lo.follow, "follow", "f", false, "follow new records")
	f.Uint64Var(&lo.last, "last", 0, fmt.Sprintf("print the last N matching records kept first (default %d without -f)", defaultLast))
	f.StringVar(&lo.since, "since", "", `only records since this long ago ("5m") or this time (RFC 3339)`)
	f.StringVarP(&lo.output, "output", "o", logs.Compact, "output format: "+strings.Join(logs.Formats, ", "))
	f.StringVar(&lo.color, "color", "auto", "colour: auto (on a terminal only), always or never")
	f.StringVar(&lo.input, "input-file", "", `filter saved JSON output (-o json) instead of asking the mesh; "-" is standard input`)
	lo.filters.AddFlags(f)
	return cmd
}

func runLogs(ctx context.Context, o *Options, lo *logsOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()

	since, err := parseSince(lo.since, time.Now())
	if err != nil {
		return err
	}
	color, err := useColor(lo.color, o.Out)
	if err != nil {
		return err
	}
	p, err := logs.NewPrinter(o.Out, lo.output, color, nil)
	if err != nil {
		return err
	}
	defer p.Close()

	last := lo.last
	if last == 0 && !lo.follow && lo.input == "" {
		last = defaultLast
	}
	req, err := lo.filters.Request(logsNamespaces(o, lo), last, lo.follow, since)
	if err != nil {
		return err
	}
	if lo.input != "" {
		in := io.Reader(os.Stdin)
		if lo.input != "-" {
			fh, err := os.Open(lo.input)
			if err != nil {
				return err
			}
			defer fh.Close()
			in = fh
		}
		req.Follow = false
		return logs.Replay(in, req, p)
	}

	conn, err := o.dialIstiod(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	cctx, err := o.istiodContext(ctx)
	if err != nil {
		return err
	}
	stream, err := logsv1.NewLogStreamClient(conn).Watch(cctx, req)
	if err != nil {
		return fmt.Errorf("logs: %w", err)
	}
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted
			}
			return fmt.Errorf("logs: %w", err)
		}
		if err := p.Write(r); err != nil {
			return err
		}
		if lo.follow {
			if err := p.Flush(); err != nil {
				return err
			}
		}
	}
}

// logsNamespaces are the namespaces asked for: none with -A, -n when
// given, none when a --from/--to-namespace flag names them or in local
// mode, else the context's namespace (as kubectl).
func logsNamespaces(o *Options, lo *logsOptions) []string {
	switch {
	case o.AllNamespaces:
		return nil
	case o.Kube.Namespace != nil && *o.Kube.Namespace != "":
		return []string{*o.Kube.Namespace}
	case lo.filters.HasNamespaceFilter(), o.Local(), lo.input != "":
		return nil
	}
	return []string{o.namespace()}
}

// parseSince reads --since: a duration before now, or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since %q: negative duration", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf(`--since %q: want a duration ("5m") or an RFC 3339 time`, s)
	}
	return t, nil
}

// useColor decides --color: auto colours only a terminal.
func useColor(mode string, out io.Writer) (bool, error) {
	switch mode {
	case "always":
		return true, nil
	case "never":
		return false, nil
	case "auto":
		f, ok := out.(*os.File)
		return ok && os.Getenv("NO_COLOR") == "" && term.IsTerminal(int(f.Fd())), nil
	}
	return false, fmt.Errorf("--color %q: want auto, always or never", mode)
}
