# Surge: the two commands a newcomer needs are `make run` and `make test`.
GO      ?= go
PKGS    := ./...
FUZZTIME ?= 10s

.PHONY: run build test test-short bench fuzz fuzz-ci lint clients

## run: start the server on :8080 with default settings
run:
	$(GO) run ./cmd/surge serve

## build: build bin/surge
build:
	$(GO) build -o bin/surge ./cmd/surge

## test: race-detected, shuffled unit and integration tests, including the
## outside clients (Node ws, Python websockets, websocket-client, headless
## Chromium incl. the status page; see .ci/run)
test:
	$(GO) test -race -shuffle=on -timeout 15m $(PKGS)

## test-short: skip the tests that open thousands of sockets
test-short:
	$(GO) test -race -shuffle=on -short $(PKGS)

## bench: codec and fan-out benchmarks with allocation counts
bench:
	$(GO) test -run='^$$' -bench=. -benchmem $(PKGS)

## fuzz: run every fuzz target for FUZZTIME each (default 10s)
fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  for t in $$($(GO) test -list='^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$t"; $(GO) test -run='^$$' -fuzz="^$$t$$" -fuzztime=$(FUZZTIME) $$pkg; \
	  done; \
	done

## fuzz-ci: every fuzz target for 20,000 executions (about 2-8 s each; run by
## .ci/run after make test). A count, not a duration: with a duration Go 1.26's
## fuzz coordinator can fail a clean run with "context deadline exceeded" at
## the deadline on a busy machine (go.dev/issue/75804, fixed in Go 1.27).
fuzz-ci:
	$(MAKE) fuzz FUZZTIME=20000x

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

## clients: install the outside test clients' npm packages
clients:
	cd test/clients && npm ci --no-audit --no-fund
