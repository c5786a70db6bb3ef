#!/usr/bin/env bash
# build.sh builds Istio's own control plane, pilot-discovery (istiod), from
# the istio.io/istio module pinned in go.mod into a cache directory outside
# the clone, keyed by a hash of go.mod, go.sum and this script:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ambient-go/istio/<hash>/bin
#
# The interoperability tests run our ztunnel against it
# (tests/kubectl/istio_test.go) and Istio's HBONE client, cmd/istio-hbone,
# against our ztunnel (tests/e2e/istio_hbone_test.go). Istio tags its releases without a "v", so the module proxy
# serves istio/istio only as pseudo-versions: go.mod names one commit of
# istio/istio master (ISTIO_COMMIT below, for the record).
#
# Usage: build.sh          build (a no-op when the binary is cached)
#        build.sh -print   print the bin directory and exit
#
# tests/kube computes the same directory (IstioAssetsDir) when ISTIO_ASSETS
# is not set.
set -euo pipefail
cd "$(dirname "$0")"

ISTIO_COMMIT=eed52ebb66ad # istio/istio master of 2026-08-27, as pinned in go.mod
# The hash covers the Go files under cmd/ too (sorted by path, as
# kubetest.ToolAssetsDir reads them).
hash=$(cat go.mod go.sum build.sh $(find cmd -type f -name '*.go' | LC_ALL=C sort) | sha256sum | cut -c1-16)
dir="${XDG_CACHE_HOME:-$HOME/.cache}/ambient-go/istio/$hash/bin"

if [[ "${1:-}" == "-print" ]]; then echo "$dir"; exit 0; fi

if [[ -x "$dir/pilot-discovery" && -x "$dir/istio-hbone" ]]; then
	echo ">> istiod (pilot-discovery) and Istio's HBONE client (istio/istio $ISTIO_COMMIT) cached in $dir"
	exit 0
fi

echo ">> building istiod (pilot-discovery) and Istio's HBONE client (istio-hbone, on istio.io/istio/pkg/hbone) from istio/istio $ISTIO_COMMIT into $dir"
echo ">> (cold build: a few minutes and about 1 GB of Go build cache)"
tmp="$dir.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
start=$SECONDS
GOWORK=off CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" -o "$tmp/" \
	istio.io/istio/pilot/cmd/pilot-discovery ./cmd/istio-hbone
rm -rf "$dir"
mv "$tmp" "$dir"
echo ">> built in $((SECONDS - start))s: $(ls "$dir" | tr '\n' ' ')"
