package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestBenchTB checks the testing.TB stand-in the netns topology hands to
// package cluster: Fatal becomes withTB's error, cleanups run last first,
// TempDir lives under its directory, Errorf marks it failed.
func TestBenchTB(t *testing.T) {
	tb, err := newBenchTB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var order []int
	tb.Cleanup(func() { order = append(order, 1) })
	tb.Cleanup(func() { order = append(order, 2) })
	dir := tb.TempDir()
	if filepath.Dir(dir) != tb.dir {
		t.Errorf("TempDir %s not under %s", dir, tb.dir)
	}
	err = withTB(func() error {
		tb.Fatalf("boom %d", 1)
		return errors.New("not reached")
	})
	if err == nil || err.Error() != "boom 1" {
		t.Errorf("withTB after Fatalf = %v, want boom 1", err)
	}
	if err := withTB(func() error { return os.ErrNotExist }); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("withTB passing an error through = %v", err)
	}
	if !tb.Failed() {
		t.Error("Failed() = false after Fatalf")
	}
	if err := tb.close(); err == nil {
		t.Error("close after a failure returned nil")
	}
	if len(order) != 2 || order[0] != 2 || order[1] != 1 {
		t.Errorf("cleanups ran in order %v, want [2 1]", order)
	}
}
