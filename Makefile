# ebb's build. `make demo` and `make test` are the two commands a newcomer runs; both build
# what they need first, from the Go module proxy, with nothing installed by hand.

GO      ?= go
TESTBIN ?= $(CURDIR)/.cache/testbin
export EBB_TESTBIN := $(TESTBIN)
# VERSION is the one place a release's version is written: the chart's appVersion, which is
# also its default image tag. The binary gets it at build time (`ebb version`).
VERSION := $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' charts/ebb/Chart.yaml)
LDFLAGS := -X main.version=$(VERSION)
# kustomize's Go plugin loader imports package plugin, which makes the linker keep every method
# and export every symbol: 29 MB more binary and about 27 MiB more resident memory, for a loader
# ebb never calls (kustomize's default options disable plugins). The Dockerfile and
# internal/daemontest build with the same tags.
TAGS    := kustomize_disable_go_plugin_support
BIN     ?= bin/ebb

.PHONY: all build test testbin prometheus chromium cluster demo vet fmt version image

all: build

## build: the ebb binary, into bin/ebb (BIN=path for another), with the chart's appVersion
build:
	$(GO) build -tags "$(TAGS)" -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/ebb

## version: print the version build and image take from charts/ebb/Chart.yaml
version:
	@echo $(VERSION)

## image: the container image, tagged with the chart's appVersion (the chart's default tag)
image:
	docker build --build-arg VERSION=$(VERSION) -t ghcr.io/ebb-dev/ebb:$(VERSION) .

## testbin: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok and helm
## at pinned versions, into .cache/testbin (rebuilt only when a pinned version changes)
testbin:
	@bash tools/build.sh

## prometheus: a real Prometheus server for the metrics check's tests: Debian's package, installed
## with apt-get (as root) when `prometheus` is not on PATH; installing it starts nothing
prometheus:
	@if command -v prometheus >/dev/null || test -x /usr/bin/prometheus; then :; else \
		echo "prometheus is not installed; installing Debian's package: apt-get update -qq && apt-get install -y -qq prometheus"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	fi

## chromium: a real headless browser for the dashboard's tests: Debian's package, installed with
## apt-get (as root) when `chromium` is not on PATH
chromium:
	@if command -v chromium >/dev/null; then :; else \
		echo "chromium is not installed; installing Debian's package: apt-get update -qq && apt-get install -y -qq chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

## test: every test, against the real local control plane, a real Git server, a real Prometheus
## and a real Chromium
test: testbin prometheus chromium
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 60m ./...

## cluster: start the dev and prod clusters in the foreground; kubeconfigs in .cache/cluster
cluster: testbin
	@$(GO) build -o bin/devcluster ./internal/cmd/devcluster
	@bin/devcluster --dir .cache/cluster

## demo: ebb's main job on the embedded local clusters (see internal/cmd/demo)
demo: testbin build
	@$(GO) build -o bin/demo ./internal/cmd/demo
	@bin/demo --dir .cache/demo --ebb bin/ebb

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')
