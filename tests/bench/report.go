package bench

import (
	"fmt"
	"math"
	"strings"
)

// Row is one line of the results table: a figure's median per variant,
// ratios, and its target.
type Row struct {
	Figure string
	Unit   string
	// Values are medians, by variant name; NaN (or absent) prints "—".
	Values map[string]float64
	// Ratios are printed as given ("mesh/direct 0.41×" ...).
	Ratios []string
	// Target is the goal in words; Verdict PASS or MISS (empty: no target).
	Target, Verdict string
}

// Check returns "PASS" when ok, else "MISS".
func Check(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// FormatValue prints v with a precision that suits its size.
func FormatValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case math.Abs(v) >= 1000:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.1f", v)
	case math.Abs(v) >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// Markdown renders rows as a table with one column per variant.
func Markdown(rows []Row, variants []string) string {
	var b strings.Builder
	b.WriteString("| figure | unit |")
	for _, v := range variants {
		b.WriteString(" " + v + " |")
	}
	b.WriteString(" ratios | target | result |\n|---|---|")
	for range variants {
		b.WriteString("---:|")
	}
	b.WriteString("---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s |", r.Figure, r.Unit)
		for _, v := range variants {
			val, ok := r.Values[v]
			if !ok {
				val = math.NaN()
			}
			b.WriteString(" " + FormatValue(val) + " |")
		}
		fmt.Fprintf(&b, " %s | %s | %s |\n", strings.Join(r.Ratios, ", "), r.Target, r.Verdict)
	}
	return b.String()
}
