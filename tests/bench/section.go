package bench

import (
	"fmt"
	"strings"
)

// A doc section is a block of a generated Markdown file that another
// program owns: `make soak` writes its figures into docs/performance.md
// between two HTML comments, and `make bench`, which rewrites that file,
// carries the block over.

func sectionMarkers(name string) (begin, end string) {
	return fmt.Sprintf("<!-- begin %s: written by another run; make bench keeps it -->", name),
		fmt.Sprintf("<!-- end %s -->", name)
}

// Section returns the block named name in doc, markers included, or ""
// when doc has none (or only half of one).
func Section(doc, name string) string {
	begin, end := sectionMarkers(name)
	i := strings.Index(doc, begin)
	if i < 0 {
		return ""
	}
	j := strings.Index(doc[i:], end)
	if j < 0 {
		return ""
	}
	return doc[i : i+j+len(end)]
}

// ReplaceSection returns doc with the block named name set to body (with
// its markers): in place when doc has the block, else appended after a
// blank line.
func ReplaceSection(doc, name, body string) string {
	begin, end := sectionMarkers(name)
	block := begin + "\n" + strings.TrimRight(body, "\n") + "\n" + end
	if old := Section(doc, name); old != "" {
		return strings.Replace(doc, old, block, 1)
	}
	return strings.TrimRight(doc, "\n") + "\n\n" + block + "\n"
}

// CarrySection returns doc with the block named name of old appended, if
// old has one and doc has not.
func CarrySection(doc, old, name string) string {
	block := Section(old, name)
	if block == "" || Section(doc, name) != "" {
		return doc
	}
	return strings.TrimRight(doc, "\n") + "\n\n" + block + "\n"
}
