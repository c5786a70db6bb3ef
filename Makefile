# Set-up and everyday commands. `make demo` and `make test` are all a fresh
# machine needs: they fetch Go modules through the module proxy and build
# what they use.
SHELL   := /bin/bash
GO      ?= go
MODULE  := github.com/ambient-go/mesh
MODULES := pkg ztunnel waypoint istiod-lite tests meshctl
PKGS    := $(foreach m,$(MODULES),$(MODULE)/$(m)/...)
BIN     := bin
TOOLS   := $(CURDIR)/.cache/tools
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
# Build tags of the ztunnel binary: grpcnotrace leaves out gRPC's
# golang.org/x/net/trace, which links html/template and with it every
# exported method of every type (ztunnel never serves /debug/requests):
# loaded segments 5 MB smaller (docs/optimisations.md, "Binary size").
ZTUNNEL_TAGS := grpcnotrace
# Binaries of the Kubernetes control plane the tests/kube harness runs,
# built by tools/kube/build.sh into a cache outside the clone.
KUBE_ASSETS ?= $(shell tools/kube/build.sh -print)
export KUBE_ASSETS
ISTIO_ASSETS ?= $(shell tools/istio/build.sh -print)
export ISTIO_ASSETS

.PHONY: build test demo bench fuzz soak conformance generate lint check-imports check-modules tools kube-binaries istio-binaries crds images

build:
	@echo ">> building istiod-lite, ztunnel, ztunnel-cni, waypoint, meshctl and demo into $(BIN)/"
	@CGO_ENABLED=0 $(GO) build -o $(BIN)/ $(MODULE)/istiod-lite/cmd/istiod-lite $(MODULE)/ztunnel/cmd/ztunnel-cni $(MODULE)/waypoint/cmd/waypoint $(MODULE)/meshctl/cmd/meshctl $(MODULE)/tests/cmd/demo
	@CGO_ENABLED=0 $(GO) build -tags $(ZTUNNEL_TAGS) -o $(BIN)/ $(MODULE)/ztunnel/cmd/ztunnel

test: check-imports check-modules kube-binaries istio-binaries
	@echo ">> go vet (all modules)"
	@$(GO) vet $(PKGS)
	@echo ">> go test -race (all modules)"
	@$(GO) test -race -count=1 -timeout 25m $(PKGS)

demo: build
	@echo ">> running the demo: istiod-lite, two ztunnels (node-a, node-b) and echo apps; as root in network namespaces with transparent capture, otherwise on loopback"
	@$(BIN)/demo -mode auto -bin $(BIN) -config examples/local -out _out/demo

bench:
	@command -v stunnel4 >/dev/null || { echo ">> installing stunnel4 (Debian) for the peer variant"; \
		apt-get update -qq && apt-get install -y -qq stunnel4; }
	@command -v haproxy >/dev/null || { echo ">> installing haproxy (Debian) for the L7 peer"; \
		apt-get update -qq && apt-get install -y -qq haproxy; }
	@echo ">> building istiod-lite, ztunnel, waypoint and the bench runner into $(BIN)/"
	@CGO_ENABLED=0 $(GO) build -o $(BIN)/ $(MODULE)/istiod-lite/cmd/istiod-lite $(MODULE)/waypoint/cmd/waypoint $(MODULE)/tests/cmd/bench
	@CGO_ENABLED=0 $(GO) build -tags $(ZTUNNEL_TAGS) -o $(BIN)/ $(MODULE)/ztunnel/cmd/ztunnel
	@if [ "$$(id -u)" = 0 ]; then topo=netns; echo ">> topology: netns (root: pods in network namespaces on two nodes, transparent capture)"; \
		else topo=loopback; echo ">> topology: loopback (not root; run as root for the netns topology)"; fi; \
	echo ">> benchmarks: direct vs mesh vs stunnel; as root also HTTP through mesh+waypoint vs stunnel+HAProxy; then the control plane, then HBONE over QUIC on a clean and a lossy underlay (about 15 minutes); writes docs/performance.md"; \
	$(BIN)/bench -bin $(BIN) -out _out/bench -topology $$topo -doc docs/performance.md

# Every native Go fuzz target (func FuzzXxx in a _test.go file), one after
# the other, for FUZZTIME each. `make test` runs their committed corpora
# (testdata/fuzz) as ordinary tests. New crashers land in testdata/fuzz of
# the package; commit them with the fix.
FUZZTIME ?= 10m
fuzz:
	@echo ">> fuzzing every target for $(FUZZTIME) each (set FUZZTIME to change), on commit $$(git rev-parse --short HEAD)"
	@for d in $$(grep -rl --include='*_test.go' '^func Fuzz' $(MODULES) | xargs -n1 dirname | sort -u); do \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$d/*_test.go); do \
			echo ">> $$d $$t"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) ./$$d/ || exit 1; \
		done; \
	done

# The soak test (tests/soak, as root): mixed traffic for SOAK_DURATION while
# faults hit the mesh on a schedule; writes docs/soak.md. `make test` runs
# its short variant (about 80 s).
SOAK_DURATION ?= 30m
SOAK_TIMEOUT  ?= 90m
soak:
	@echo ">> soak test for $(SOAK_DURATION) (set SOAK_DURATION to change; as root, in network namespaces); writes docs/soak.md and the soak block of docs/performance.md"
	@SOAK_DURATION=$(SOAK_DURATION) SOAK_REPORT=$(CURDIR)/docs/soak.md SOAK_PERF_DOC=$(CURDIR)/docs/performance.md $(GO) test -count=1 -timeout $(SOAK_TIMEOUT) -run '^TestSoak$$' -v $(MODULE)/tests/soak

# The Gateway API conformance suite's MESH-HTTP and MESH-GRPC profiles
# (tests/conformance, as root) against the mesh on the tests/kube harness;
# writes the suite's report to docs/conformance/. `make test` runs only its
# MeshBasic test. CONFORMANCE_RUN_TEST=<ShortName> runs one test.
CONFORMANCE_TIMEOUT ?= 60m
conformance: kube-binaries
	@echo ">> Gateway API conformance (MESH-HTTP, MESH-GRPC) against istiod-lite, ztunnels and waypoints on the kube harness (as root); writes docs/conformance/ambient-go-mesh-report.yaml"
	@CONFORMANCE=full $(GO) test -count=1 -timeout $(CONFORMANCE_TIMEOUT) -run '^TestMeshConformance$$' -v $(MODULE)/tests/conformance

# The data plane modules (ztunnel, waypoint) must not depend on any
# Kubernetes package.
check-imports:
	@for m in ztunnel waypoint; do \
		echo ">> checking that $$m imports no k8s.io package"; \
		deps=$$($(GO) list -deps $(MODULE)/$$m/... | grep -E '^k8s\.io/' || true); \
		if [ -n "$$deps" ]; then echo "$$m depends on: $$deps"; exit 1; fi; \
	done

# Every module builds on its own, outside the workspace.
check-modules:
	@echo ">> checking that each module builds alone (GOWORK=off)"
	@for m in $(MODULES); do (cd $$m && GOWORK=off $(GO) build ./...) || exit 1; done

lint: check-imports check-modules
	@echo ">> gofmt"
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "not gofmt-formatted:"; echo "$$out"; exit 1; fi
	@echo ">> go vet"
	@$(GO) vet $(PKGS)

# etcd, kube-apiserver, kube-controller-manager and kubectl from the module
# proxy (tools/kube); a no-op when cached. Cold: several minutes.
kube-binaries:
	@tools/kube/build.sh

# Istio's own istiod (pilot-discovery) from the module proxy (tools/istio),
# which tests/kubectl runs our ztunnel against; a no-op when cached.
istio-binaries:
	@tools/istio/build.sh

# Container images (tests/cmd/images, no daemon): static binaries for
# linux/amd64 and linux/arm64 into _out/images (OCI layouts and docker
# tarballs; see docs/kubernetes.md). REGISTRY=host/path pushes them.
TAG ?= dev
images:
	@echo ">> building images $(or $(REGISTRY),ambient-go)/{istiod-lite,ztunnel,waypoint,meshctl}:$(TAG) into _out/images"
	@$(GO) run $(MODULE)/tests/cmd/images -out _out/images -tag $(TAG) $(if $(REGISTRY),-repository $(REGISTRY) -push)

# CRDs from the pinned istio.io/api and sigs.k8s.io/gateway-api modules.
crds:
	@echo ">> generating crds/ from istio.io/api and sigs.k8s.io/gateway-api (tests/cmd/crdgen)"
	@$(GO) run $(MODULE)/tests/cmd/crdgen -out crds -moddir istiod-lite

tools:
	@command -v protoc >/dev/null || { echo ">> installing protoc (Debian protobuf-compiler)"; \
		apt-get update -qq && apt-get install -y -qq protobuf-compiler; }
	@test -x $(TOOLS)/protoc-gen-go || { echo ">> installing protoc-gen-go $(PROTOC_GEN_GO_VERSION)"; \
		GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION); }
	@test -x $(TOOLS)/protoc-gen-go-grpc || { echo ">> installing protoc-gen-go-grpc $(PROTOC_GEN_GO_GRPC_VERSION)"; \
		GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION); }

generate: tools
	@echo ">> generating Go code from pkg/workloadapi/proto, pkg/xds/proto and pkg/logstream/proto"
	@cd pkg/workloadapi && PATH=$(TOOLS):$$PATH $(GO) generate .
	@cd pkg/xds/adspb && PATH=$(TOOLS):$$PATH $(GO) generate .
	@cd pkg/logstream/logsv1 && PATH=$(TOOLS):$$PATH $(GO) generate .
