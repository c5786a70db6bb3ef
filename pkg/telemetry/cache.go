package telemetry

import "sync"

// seriesCache holds the metrics of each label set, built on first use:
// WithLabelValues hashes every label value, so the data path looks its
// series up by the label struct instead. Known label sets take only the
// read lock.
type seriesCache[K comparable, V any] struct {
	mu sync.RWMutex
	m  map[K]V
}

// get returns the value of k, building it with build the first time.
func (c *seriesCache[K, V]) get(k K, build func() V) V {
	c.mu.RLock()
	v, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return v
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok = c.m[k]; ok {
		return v
	}
	if c.m == nil {
		c.m = make(map[K]V)
	}
	v = build()
	c.m[k] = v
	return v
}
