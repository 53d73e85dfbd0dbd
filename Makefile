# orderflow: `make run` runs the service against a local broker, `make test` runs every test.
SHELL := /bin/bash
CARGO ?= cargo
BIN := target/release/orderflow
KAFKA := deploy/local/kafka.sh


.PHONY: run serve test deploy-check bench bench-quick bench-core bench-aged bench-engines chaos chaos-cluster lint build kafka-up kafka-down kafka-status kafka-logs clean-kafka bench-traces

## run: local broker (127.0.0.1:9092), topics, the processor, and a demo load with its outcomes
run: build
	bash deploy/local/run.sh

## serve: like run, but the processor keeps running until Ctrl-C
serve: build
	KEEP_RUNNING=1 bash deploy/local/run.sh

## test: start a test broker (127.0.0.1:19092), run unit + integration tests, stop it
test:
	bash deploy/local/test.sh

## deploy-check: render deploy/k8s, validate manifests, alert rules, dashboard and cluster config offline
deploy-check:
	bash deploy/check.sh

## bench-core: criterion micro-benchmarks of decide and the codec, written to docs/benchmarks.md
bench-core:
	$(CARGO) bench --bench core
	python3 bench/core_report.py

## lint: formatting and clippy with warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features failpoints -- -D warnings

build:
	$(CARGO) build --release

kafka-up:
	$(KAFKA) up

kafka-down:
	$(KAFKA) down

kafka-status:
	$(KAFKA) status

kafka-logs:
	$(KAFKA) logs

## clean-kafka: stop the local broker and wipe its data
clean-kafka:
	$(KAFKA) down --purge

## bench: end-to-end benchmarks (orderflow vs an exactly-once pipe vs Kafka Streams 4.4, latency, restore) on a fresh broker, written to docs/benchmarks.md
bench:
	python3 bench/run.py

## bench-quick: the headline ratios (orderflow, the pipe, Kafka Streams at its best) in under 10 minutes
bench-quick:
	python3 bench/run.py --quick

## bench-aged: the disk backend's memory budget under realistic access (10 M aged orders; skewed and uniform) vs the memory backend, written to docs/benchmarks.md
bench-aged:
	python3 bench/aged_access.py

## bench-traces: the cost of traces (orderflow with traces off, on for 1% and for every request, exporting to a local Jaeger), written to docs/benchmarks.md
bench-traces:
	python3 bench/run.py --traces

## bench-engines: the store's engine compared on its own workload (fjall, LMDB, RocksDB if libclang is installed), written to docs/benchmarks.md
bench-engines:
	python3 bench/store_engines.py

## chaos: kill, churn, broker restart, poison and zombie scenarios under load, judged by orderflow check (docs/reliability.md)
chaos:
	python3 tests/chaos/run.py

## chaos-cluster: only the three-node cluster (leader and transaction-coordinator crashes) and rolling-restart scenarios
chaos-cluster:
	python3 tests/chaos/run.py --only rolling,rolling-static,leader-kill,coordinator-kill,group-coordinator-kill
