package bench

import (
	"strings"
	"testing"
)

func TestReplaceSection(t *testing.T) {
	fresh := "# Performance\n\ntable\n"
	withSoak := ReplaceSection(fresh, "soak", "## Soak\n\nfigures 1\n")
	if got := Section(withSoak, "soak"); !strings.Contains(got, "figures 1") {
		t.Fatalf("Section after ReplaceSection = %q, want the body", got)
	}
	if !strings.HasPrefix(withSoak, fresh) {
		t.Errorf("ReplaceSection changed the rest of the document:\n%s", withSoak)
	}
	again := ReplaceSection(withSoak, "soak", "## Soak\n\nfigures 2\n")
	if strings.Contains(again, "figures 1") || strings.Count(again, "figures 2") != 1 {
		t.Errorf("replacing the block did not replace it once:\n%s", again)
	}
	// What make bench does: a new document, the old block carried over.
	carried := CarrySection("# Performance\n\nnew table\n", again, "soak")
	if !strings.Contains(carried, "new table") || strings.Count(carried, "figures 2") != 1 {
		t.Errorf("carried-over document:\n%s", carried)
	}
	if got := CarrySection(carried, again, "soak"); got != carried {
		t.Errorf("carrying a block the document has changed it:\n%s", got)
	}
	if got := CarrySection(fresh, "old without a block", "soak"); got != fresh {
		t.Errorf("carrying from a document without a block changed it:\n%s", got)
	}
	if got := Section("no block here <!-- end soak -->", "soak"); got != "" {
		t.Errorf("Section without a begin marker = %q, want empty", got)
	}
	half, _ := sectionMarkers("soak")
	if got := Section("x "+half+" y", "soak"); got != "" {
		t.Errorf("Section without an end marker = %q, want empty", got)
	}
}
