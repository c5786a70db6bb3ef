#!/usr/bin/env bash
# build.sh builds etcd, kube-apiserver, kube-controller-manager and kubectl
# from the modules pinned in go.mod into a cache directory outside the clone,
# keyed by a hash of go.mod, go.sum and this script:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ambient-go/kube/<hash>/bin
#
# Usage: build.sh          build (a no-op when the binaries are cached)
#        build.sh -print   print the bin directory and exit
#
# tests/kube computes the same directory (see tests/kube/assets.go) when
# KUBE_ASSETS is not set.
set -euo pipefail
cd "$(dirname "$0")"

KUBE_VERSION=v1.37.2 # must match k8s.io/kubernetes in go.mod
hash=$(cat go.mod go.sum build.sh | sha256sum | cut -c1-16)
dir="${XDG_CACHE_HOME:-$HOME/.cache}/ambient-go/kube/$hash/bin"
bins=(etcd kube-apiserver kube-controller-manager kubectl)

if [[ "${1:-}" == "-print" ]]; then echo "$dir"; exit 0; fi

missing=0
for b in "${bins[@]}"; do [[ -x "$dir/$b" ]] || missing=1; done
if [[ $missing == 0 ]]; then
	echo ">> kube binaries ($KUBE_VERSION) cached in $dir"
	exit 0
fi

echo ">> building ${bins[*]} ($KUBE_VERSION) into $dir"
echo ">> (cold build: several minutes and a few GB of Go build cache)"
major=${KUBE_VERSION#v}; major=${major%%.*}
minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
	ldflags+=" -X $p.gitTreeState=clean -X $p.gitCommit=0000000000000000000000000000000000000000"
	ldflags+=" -X $p.buildDate=1970-01-01T00:00:00Z"
done
tmp="$dir.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
start=$SECONDS
GOWORK=off CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kubectl \
	./etcd
rm -rf "$dir"
mv "$tmp" "$dir"
echo ">> built in $((SECONDS - start))s: $(ls "$dir" | tr '\n' ' ')"
