# candlekeep — two commands on a fresh machine: `make run` and `make test`.
GO            ?= go
MODULES       := pkg services/fetcher services/writer services/monitor services/backup cmd/candlekeep
NATS_CLI      := github.com/nats-io/natscli/nats@v0.5.0
TOOLS         := $(CURDIR)/.tools
BIN           := $(CURDIR)/bin/candlekeep
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
NATS_SERVER   := $(CURDIR)/bin/nats-server
# Images `make images` builds (FROM scratch, no registry); the compose file
# and the container tests use them through these variables.
CANDLEKEEP_IMAGE ?= candlekeep:test
NATS_IMAGE       ?= candlekeep-nats:test
# Tests find the real nats CLI, the built binaries and the images here.
TEST_ENV      := PATH="$(TOOLS):$$PATH" CANDLEKEEP_TEST_BINARY="$(BIN)" \
	CANDLEKEEP_IMAGE="$(CANDLEKEEP_IMAGE)" NATS_IMAGE="$(NATS_IMAGE)"

.PHONY: all build run sim test test-short bench bench-cluster tools vet fmt clean images nats-server secrets

all: build

## build: the static binary bin/candlekeep (CGO_ENABLED=0)
build:
	cd cmd/candlekeep && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) .

## run: candlekeep up against the real Binance API, 60 symbols x 4h, data in ./data
run: build
	$(BIN) up

## sim: the Binance simulator on 127.0.0.1:9100 (50 ms per request)
sim: build
	$(BIN) sim --listen 127.0.0.1:9100 --latency 50ms

## nats-server: the static bin/nats-server, built from the nats-server Go
## module at the version pkg/go.mod pins (no prebuilt download)
nats-server:
	cd cmd/candlekeep && CGO_ENABLED=0 $(GO) build -trimpath -o $(NATS_SERVER) github.com/nats-io/nats-server/v2

## images: $(CANDLEKEEP_IMAGE) and $(NATS_IMAGE), FROM scratch, non-root
## (docker only, no registry; skipped with a note when docker is absent)
images: build nats-server
	@if docker info >/dev/null 2>&1; then \
		deploy/images/build.sh candlekeep $(CANDLEKEEP_IMAGE) $(BIN) $(VERSION) && \
		deploy/images/build.sh nats $(NATS_IMAGE) $(NATS_SERVER) $(VERSION); \
	else echo "images: docker is not available, images not built (the container tests skip)"; fi

## secrets: NATS credentials for deploy/compose (one nkey per service, the
## route password, nats CLI contexts), owned by the containers' user
secrets: build
	deploy/compose/make-secrets.sh $(BIN) deploy/compose/secrets

## tools: the pinned nats CLI the tests drive, in .tools/
tools: $(TOOLS)/nats
$(TOOLS)/nats:
	GOBIN=$(TOOLS) CGO_ENABLED=0 $(GO) install $(NATS_CLI)

## test: vet and the whole suite, every module. The container tests
## (cmd/candlekeep TestCompose*, about 9 minutes of a compose stack mostly
## waiting on its containers) run beside the rest, so the whole stays
## under 15 minutes on 2 cores; their output follows the rest's.
test: build tools images vet
	@set -e; clog=$$(mktemp); \
	(cd cmd/candlekeep && $(TEST_ENV) $(GO) test -count=1 -timeout 13m -run '^TestCompose' .) >$$clog 2>&1 & cpid=$$!; \
	for m in $(MODULES); do echo "== $$m"; (cd $$m && $(TEST_ENV) $(GO) test -count=1 -timeout 13m -skip '^TestCompose' ./...) || { echo "== waiting for the container tests to clean up"; wait $$cpid; cat $$clog; rm -f $$clog; exit 1; }; done; \
	echo "== cmd/candlekeep container tests (TestCompose*)"; \
	if wait $$cpid; then cat $$clog; rm -f $$clog; else cat $$clog; rm -f $$clog; exit 1; fi

## test-short: the suite without the slow end-to-end tests
test-short: build tools
	@set -e; for m in $(MODULES); do (cd $$m && $(TEST_ENV) $(GO) test -count=1 -short ./...); done

## bench: the DESIGN.md section 4 figures, measured in one run (needs the
## binary and the nats CLI, so it works on a fresh checkout)
bench: build tools
	cd cmd/candlekeep && $(TEST_ENV) $(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 20m .

## bench-cluster: backfill throughput on the 3-node R3 compose cluster as a
## ratio of the embedded single server, and the time from a node stop to the
## next stored batch (needs docker)
bench-cluster: build tools images
	cd cmd/candlekeep && $(TEST_ENV) CANDLEKEEP_REQUIRE_DOCKER=1 $(GO) test -count=1 -run '^$$' -bench 'BenchmarkCluster' -benchtime 1x -timeout 20m .

vet:
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) vet ./...); done

fmt:
	gofmt -w $(MODULES)

clean:
	rm -rf bin .tools
