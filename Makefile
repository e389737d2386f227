# candlekeep — two commands on a fresh machine: `make run` and `make test`.
GO            ?= go
MODULES       := pkg services/fetcher services/writer services/monitor services/backup cmd/candlekeep
NATS_CLI      := github.com/nats-io/natscli/nats@v0.5.0
TOOLS         := $(CURDIR)/.tools
BIN           := $(CURDIR)/bin/candlekeep
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Tests find the real nats CLI and the built binary here.
TEST_ENV      := PATH="$(TOOLS):$$PATH" CANDLEKEEP_TEST_BINARY="$(BIN)"

.PHONY: all build run sim test test-short bench tools vet fmt clean

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

## tools: the pinned nats CLI the tests drive, in .tools/
tools: $(TOOLS)/nats
$(TOOLS)/nats:
	GOBIN=$(TOOLS) CGO_ENABLED=0 $(GO) install $(NATS_CLI)

## test: vet and the whole suite, every module
test: build tools vet
	@set -e; for m in $(MODULES); do echo "== $$m"; (cd $$m && $(TEST_ENV) $(GO) test -count=1 -timeout 8m ./...); done

## test-short: the suite without the slow end-to-end tests
test-short: build tools
	@set -e; for m in $(MODULES); do (cd $$m && $(TEST_ENV) $(GO) test -count=1 -short ./...); done

## bench: the DESIGN.md section 4 figures, measured in one run (needs the
## binary and the nats CLI, so it works on a fresh checkout)
bench: build tools
	cd cmd/candlekeep && $(TEST_ENV) $(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 20m .

vet:
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) vet ./...); done

fmt:
	gofmt -w $(MODULES)

clean:
	rm -rf bin .tools
