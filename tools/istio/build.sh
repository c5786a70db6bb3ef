#!/usr/bin/env bash
# build.sh builds Istio's own control plane, pilot-discovery (istiod), from
# the istio.io/istio module pinned in go.mod into a cache directory outside
# the clone, keyed by a hash of go.mod, go.sum and this script:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ambient-go/istio/<hash>/bin
#
# The interoperability tests (tests/kubectl/istio_test.go) run our ztunnel
# against it. Istio tags its releases without a "v", so the module proxy
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
hash=$(cat go.mod go.sum build.sh | sha256sum | cut -c1-16)
dir="${XDG_CACHE_HOME:-$HOME/.cache}/ambient-go/istio/$hash/bin"

if [[ "${1:-}" == "-print" ]]; then echo "$dir"; exit 0; fi

if [[ -x "$dir/pilot-discovery" ]]; then
	echo ">> istiod (pilot-discovery, istio/istio $ISTIO_COMMIT) cached in $dir"
	exit 0
fi

echo ">> building istiod (pilot-discovery, istio/istio $ISTIO_COMMIT) into $dir"
echo ">> (cold build: a few minutes and about 1 GB of Go build cache)"
tmp="$dir.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
start=$SECONDS
GOWORK=off CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" -o "$tmp/" \
	istio.io/istio/pilot/cmd/pilot-discovery
rm -rf "$dir"
mv "$tmp" "$dir"
echo ">> built in $((SECONDS - start))s: $(ls "$dir" | tr '\n' ' ')"
