package localdir

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestParseFileCached checks that an edit decodes only the documents it
// changed, and that the result equals a fresh parse.
func TestParseFileCached(t *testing.T) {
	const a = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: ns\n"
	const b = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n  namespace: ns\n"
	const b2 = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n  namespace: ns\n  labels:\n    v: \"2\"\n"
	const raw = "apiVersion: example.com/v1\nkind: Thing\nmetadata:\n  name: t\n  namespace: ns\n"
	objs1, docs, err := parseFileCached("f.yaml", []byte(a+"---\n"+b+"---\n"+raw), nil)
	if err != nil {
		t.Fatal(err)
	}
	// b changes and gains lines: a is reused, b decoded again, the raw
	// object (which records its line) decoded again at its new line.
	data := []byte(a + "---\n" + b2 + "---\n" + raw)
	objs2, _, err := parseFileCached("f.yaml", data, docs)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := parseFile("f.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs2) != 3 || len(fresh) != 3 {
		t.Fatalf("got %d objects, fresh parse %d, want 3", len(objs2), len(fresh))
	}
	if objs2[0].obj != objs1[0].obj {
		t.Error("unchanged document decoded again")
	}
	if objs2[1].obj == objs1[1].obj || objs2[1].obj.(*corev1.Pod).Labels["v"] != "2" {
		t.Error("changed document not decoded again")
	}
	for i := range fresh {
		if objs2[i].line != fresh[i].line || objs2[i].key != fresh[i].key {
			t.Errorf("object %d: line %d key %v, fresh parse: line %d key %v", i, objs2[i].line, objs2[i].key, fresh[i].line, fresh[i].key)
		}
	}
	if got, want := objs2[2].obj.(*RawObject).Line, fresh[2].obj.(*RawObject).Line; got != want {
		t.Errorf("raw object line %d, want %d", got, want)
	}
	// A document that fails still fails the whole file.
	if _, _, err := parseFileCached("f.yaml", []byte(a+"---\nkind: [\n"), docs); err == nil {
		t.Error("broken document parsed")
	}
}
