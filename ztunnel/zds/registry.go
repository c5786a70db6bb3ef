package zds

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// recordName is the file holding a pod's record: its key, made safe for a
// file name.
func recordName(p Pod) string {
	r := strings.NewReplacer("/", "_", string(os.PathSeparator), "_", "..", "_")
	return r.Replace(p.Key()) + ".json"
}

// WriteRecord stores p in dir (created if missing), atomically.
func WriteRecord(dir string, p Pod) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("zds: %w", err)
	}
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("zds: encoding record: %w", err)
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("zds: %w", err)
	}
	_, werr := f.Write(b)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("zds: writing record: %w", err)
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, recordName(p))); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("zds: %w", err)
	}
	return nil
}

// RemoveRecord removes p's record from dir; a missing record is not an
// error.
func RemoveRecord(dir string, p Pod) error {
	if err := os.Remove(filepath.Join(dir, recordName(p))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("zds: %w", err)
	}
	return nil
}

// Records returns the pods recorded in dir, ordered by key. A missing dir
// holds none; a record that does not decode is skipped and reported in the
// error, along with the records that do.
func Records(dir string) ([]Pod, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("zds: %w", err)
	}
	var pods []Pod
	var errs []error
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var p Pod
		if err := json.Unmarshal(b, &p); err != nil {
			errs = append(errs, fmt.Errorf("record %s: %w", e.Name(), err))
			continue
		}
		pods = append(pods, p)
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Key() < pods[j].Key() })
	if len(errs) > 0 {
		return pods, fmt.Errorf("zds: %w", errors.Join(errs...))
	}
	return pods, nil
}
