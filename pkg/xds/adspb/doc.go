// Package adspb holds the delta ADS messages the mesh's xDS client sends and
// receives: wire-compatible subsets of Envoy's, in the project's own proto
// package (proto/ads.proto says why). The Go code is generated from
// ../proto/ads.proto by `make generate` and never edited.
package adspb

//go:generate protoc -I ../proto --go_out=. --go_opt=module=github.com/ambient-go/mesh/pkg/xds/adspb ads.proto
