package state

import (
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// claims indexes values by a key that several of them may claim at once —
// an IP reused during pod churn (istio/ztunnel#1637), a VIP or hostname
// given to two services — and resolves each key to one winner. Every
// claimant is kept, so when the winner leaves the next one takes over: the
// index depends only on the claimants present, never on the order in
// which they were added and removed. Methods are called with Store.mu
// held.
type claims[K comparable, V comparable] struct {
	all map[K][]V // every claimant of a key, in no order
	win map[K]V   // the winner of each key
	// cmp orders claimants: the smallest wins.
	cmp func(a, b V) int
	// name names a claimant in logs.
	name func(V) string
	// touched are the keys whose claimants changed since the last report;
	// reported is the conflict last logged per key.
	touched  map[K]struct{}
	reported map[K]string
}

func newClaims[K comparable, V comparable](cmp func(a, b V) int, name func(V) string) *claims[K, V] {
	return &claims[K, V]{
		all: map[K][]V{}, win: map[K]V{}, cmp: cmp, name: name,
		touched: map[K]struct{}{}, reported: map[K]string{},
	}
}

func (c *claims[K, V]) get(k K) V { return c.win[k] }

func (c *claims[K, V]) add(k K, v V) {
	if !slices.Contains(c.all[k], v) {
		c.all[k] = append(c.all[k], v)
	}
	c.resolve(k)
}

func (c *claims[K, V]) remove(k K, v V) {
	vs := slices.DeleteFunc(c.all[k], func(x V) bool { return x == v })
	if len(vs) == 0 {
		delete(c.all, k)
	} else {
		c.all[k] = vs
	}
	c.resolve(k)
}

func (c *claims[K, V]) resolve(k K) {
	c.touched[k] = struct{}{}
	vs := c.all[k]
	if len(vs) == 0 {
		delete(c.win, k)
		return
	}
	c.win[k] = slices.MinFunc(vs, c.cmp)
}

// conflict describes the claimants of k when there are several: the
// winner first, then the others in order; "" when there is no conflict.
func (c *claims[K, V]) conflict(k K) (winner string, others []string) {
	vs := c.all[k]
	if len(vs) < 2 {
		return "", nil
	}
	vs = slices.SortedFunc(slices.Values(vs), c.cmp)
	for _, v := range vs[1:] {
		others = append(others, c.name(v))
	}
	return c.name(vs[0]), others
}

// report logs, once per change, each touched key that came into conflict,
// changed claimants while in conflict, or left it.
func (c *claims[K, V]) report(log *slog.Logger, kind string, key func(K) string) {
	for k := range c.touched {
		delete(c.touched, k)
		winner, others := c.conflict(k)
		sig := ""
		if winner != "" {
			sig = winner + " " + strings.Join(others, " ")
		}
		if c.reported[k] == sig {
			continue
		}
		if sig == "" {
			delete(c.reported, k)
			log.Info("address conflict resolved", "kind", kind, "address", key(k))
			continue
		}
		c.reported[k] = sig
		log.Warn("address claimed more than once", "kind", kind, "address", key(k), "winner", winner, "losers", others)
	}
}

// Conflict is an address claimed by several workloads or services, for
// /config_dump.
type Conflict struct {
	Kind    string   `json:"kind"` // "workload address", "service VIP" or "service hostname"
	Address string   `json:"address"`
	Winner  string   `json:"winner"`
	Losers  []string `json:"losers"`
}

func (c *claims[K, V]) conflicts(kind string, key func(K) string) []Conflict {
	var out []Conflict
	for k := range c.reported {
		winner, others := c.conflict(k)
		if winner != "" {
			out = append(out, Conflict{Kind: kind, Address: key(k), Winner: winner, Losers: others})
		}
	}
	slices.SortFunc(out, func(a, b Conflict) int { return strings.Compare(a.Address, b.Address) })
	return out
}

// workloadWins orders the workloads claiming one IP: a HEALTHY workload
// before one that is not, then the lowest uid. Both are properties of the
// workloads alone, so every ztunnel resolves a conflict the same way
// whatever order the updates arrived in.
func workloadWins(a, b *Workload) int {
	ah, bh := a.Status == workloadapi.WorkloadStatus_HEALTHY, b.Status == workloadapi.WorkloadStatus_HEALTHY
	switch {
	case ah && !bh:
		return -1
	case bh && !ah:
		return 1
	}
	return strings.Compare(a.Uid, b.Uid)
}

// serviceWins orders the services claiming one VIP or hostname: the lowest
// key (namespace/hostname).
func serviceWins(a, b *Service) int { return strings.Compare(a.Key, b.Key) }

func addrString(a netip.Addr) string { return a.String() }
func hostString(h string) string     { return h }
