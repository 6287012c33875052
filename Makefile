# stockd developer targets.  `make` alone prints the list.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
# /usr/local/go/bin may be missing from PATH in non-login shells; appended so
# that a go already on PATH wins.
export PATH := $(PATH):/usr/local/go/bin

.DEFAULT_GOAL := help

GO        ?= go
BIN       := bin/stockd
PKG       ?= ./...
TESTFLAGS ?=
# extra arguments for the daemon: make run ARGS="-some-flag"
ARGS      ?=
# Stamped into the binary (`stockd version`, stockd_build_info, the version
# /admin/cluster shows); without git, the binary falls back to what the Go
# toolchain recorded, then "dev".
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
REVISION  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS   := -X github.com/stockd/stockd/daemon.Version=$(VERSION) -X github.com/stockd/stockd/daemon.Revision=$(REVISION)

.PHONY: help setup build run run-cluster run-ha test test-faults vet shards-start shards-stop clean bench bench-quick

help:
	@echo "stockd make targets:"
	@echo "  setup         make Redis :6379, MariaDB :3306, RabbitMQ :5672 reachable (scripts/services.sh)"
	@echo "  build         go build -o $(BIN) ./daemon/cmd/stockd, stamped VERSION=$(VERSION) (git describe --always --dirty; VERSION=... overrides)"
	@echo "  run           build, then run the demo in the foreground: services, shards, one node (Ctrl-C stops it; ARGS=...)"
	@echo "  run-cluster   build, then the same with three nodes on :8080, :8090, :8100 (Ctrl-C stops it; ARGS=...)"
	@echo "  run-ha        build, then the demo with one more shard managed by Redis Sentinel (primary, replica, 3 sentinels; kill the primary and watch)"
	@echo "  test          setup (services, chromium, promtool), then go test -race (PKG=$(PKG), TESTFLAGS=...)"
	@echo "  test-faults   setup, then the fault-injection suite in ./faults/ and the HA cases of daemon/ (-tags faults, < 15 min), one table (docs/RELIABILITY.md)"
	@echo "  vet           gofmt -l check + go vet ./..."
	@echo "  shards-start  start the demo Redis shards 7001-7003 (var/redis/<port>)"
	@echo "  shards-stop   stop the demo Redis shards"
	@echo "  clean         stop the demo shards, rm -rf bin var, drop the demo database stockd_demo"
	@echo "  bench         setup, then the benchmarks (go run ./bench/run, < 12 min): writes docs/BENCHMARKS.md"
	@echo "  bench-quick   setup, then a short smoke run of the benchmarks (< 2 min): writes /tmp/BENCHMARKS.quick.md"

setup:
	@bash scripts/services.sh

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./daemon/cmd/stockd

# run.sh and run-cluster.sh run scripts/services.sh themselves (not via
# `setup`): they record which services they start and stop those on exit.
run: build
	@bash scripts/run.sh $(ARGS)

run-cluster: build
	@bash scripts/run-cluster.sh $(ARGS)

run-ha: build
	@bash scripts/run-ha.sh $(ARGS)

test: setup
	@bash scripts/chromium.sh
	@bash scripts/promtool.sh
	$(GO) test -race -count=1 -timeout 14m $(TESTFLAGS) $(PKG)

# The whole fault suite (make test runs only its fast, untagged subset).
# It kills and freezes its own Redis and stockd processes, proxies its own
# connections to MariaDB and RabbitMQ, and raises RabbitMQ's memory alarm
# for ten seconds (restored at the end of that case).
# The high-availability cases that kill Sentinel- and Cluster-managed
# Redis (daemon/ha_faults_test.go, tag faults) run after it and print their
# figures. Each ./faults/ case appends its figures to var/faults-report.jsonl; the table of
# docs/RELIABILITY.md is printed from it at the end (go run ./faults/table).
test-faults: setup
	@mkdir -p var && rm -f var/faults-report.jsonl
	STOCKD_TEST_FAULTS_REPORT=$(CURDIR)/var/faults-report.jsonl $(GO) test -race -count=1 -tags faults -timeout 15m $(TESTFLAGS) ./faults/; \
	rc=$$?; STOCKD_TEST_FAULTS_REPORT=$(CURDIR)/var/faults-report.jsonl $(GO) test -race -count=1 -tags faults -timeout 5m -v -run '^TestHA' ./daemon/ > var/ha-faults.log 2>&1 || rc=1; \
	grep -E '^(---|ok|FAIL)|ha_[a-z_]*test.go' var/ha-faults.log; \
	$(GO) run ./faults/table var/faults-report.jsonl; exit $$rc

vet:
	@files="$$(gofmt -l .)"; \
	if [ -n "$$files" ]; then echo "gofmt -l: these files need gofmt -w:"; echo "$$files"; exit 1; fi
	$(GO) vet ./...

# The benchmarks start their own stockd, Redis processes, databases and
# queue, and remove them again; see docs/BENCHMARKS.md (Method).
bench: setup
	$(GO) run ./bench/run

bench-quick: setup
	$(GO) run ./bench/run -quick -out /tmp/BENCHMARKS.quick.md

shards-start:
	@bash scripts/shards.sh start

shards-stop:
	@bash scripts/shards.sh stop

# The demo's Redis data (var/) and its MySQL database go together: a
# partition whose Redis state vanished while MySQL remembers its stock is
# fenced as lost, so dropping one without the other leaves a dead demo SKU.
clean:
	-@bash scripts/shards.sh stop
	rm -rf bin var
	-@mysql -h127.0.0.1 -uroot -e 'DROP DATABASE IF EXISTS stockd_demo' 2>/dev/null
