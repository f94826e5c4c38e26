# Entry points for people and CI. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
SIM_SEEDS ?= 0..500
SIM_LONG_SEEDS ?= 0..20000
# Election liveness on a slow, lossy network (raft-sim --slow-network).
SLOW_SEEDS ?= 0..2000
FUZZ_SECS ?= 60

.PHONY: help build release test test-unit sim sim-long chaos chaos-short failover-drill membership-drill fuzz fuzz-short bench bench-proto bench-server bench-stall clippy fmt cluster stop clean mutants
CHAOS_SEEDS ?= 1 2 3 4 5
CHAOS_SECS ?= 120
TRIALS ?= 10

help:
	@echo "make help       this list"
	@echo "make cluster    build release, start 3 members on 127.0.0.1/.2/.3, wait for a leader"
	@echo "make stop       stop the members started by make cluster"
	@echo "make test       the whole test suite (what CI runs)"
	@echo "make test-unit  cargo test --workspace only (unit, scenario and process-level tests)"
	@echo "make build      debug build of the workspace"
	@echo "make release    release build of the workspace (target/release/raft-node)"
	@echo "make sim        simulator sweep over SIM_SEEDS ($(SIM_SEEDS)), then SLOW_SEEDS ($(SLOW_SEEDS)) on a slow, lossy network"
	@echo "make sim-long   long simulator sweep over SIM_LONG_SEEDS ($(SIM_LONG_SEEDS))"
	@echo "make chaos-short  one 45 s chaos run, seed 1 (part of make test; root)"
	@echo "make chaos      Jepsen-style check of a real cluster under faults, seeds CHAOS_SEEDS, CHAOS_SECS s each (root)"
	@echo "make failover-drill  kill, freeze and isolate the leader TRIALS times each; detection/election/unavailability (root)"
	@echo "make membership-drill  replace members and restart them all in turn under write load; lost writes, pauses (root)"
	@echo "make fuzz       run each fuzz target for FUZZ_SECS ($(FUZZ_SECS)) seconds"
	@echo "make fuzz-short each fuzz target for a fixed number of runs from the kept seeds (CI)"
	@echo "make bench      benchmarks: raft-proto criterion benches, then a 3-node cluster under load (fsync on)"
	@echo "make bench-proto   raft-proto's criterion benches only"
	@echo "make bench-server  a temporary 3-node cluster under load: SET/GET throughput and latency, idle CPU and memory"
	@echo "make bench-stall   the heavy-client rows of issue 21 on 3-node clusters: longest loop turn per member, elections"
	@echo "make clippy     lints, warnings are errors"
	@echo "make fmt        cargo fmt on the workspace"
	@echo "make clean      cargo clean and remove data/ (make cluster's members)"
	@echo "make mutants    cargo-mutants on raft-proto's core files with the fast tests, 50 min at most (docs/mutants.md)"

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release --workspace

# Unit tests, scenario tests, process-level tests, then the simulator sweep.
test: release
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace
	$(MAKE) sim
	$(MAKE) chaos-short

test-unit:
	$(CARGO) test --workspace

sim:
	$(CARGO) run --release -q -p tools --bin raft-sim -- --seeds $(SIM_SEEDS)
	$(CARGO) run --release -q -p tools --bin raft-sim -- --slow-network --seeds $(SLOW_SEEDS)

sim-long:
	$(CARGO) run --release -q -p tools --bin raft-sim -- --seeds $(SIM_LONG_SEEDS)

# A real cluster in a private network namespace, with iptables faults inside
# it (needs root, iptables and iproute2; .ci/run installs them).
chaos-short: release
	target/release/raft-chaos --seed 1 --duration-secs 45

chaos: release
	for s in $(CHAOS_SEEDS); do target/release/raft-chaos --seed $$s --duration-secs $(CHAOS_SECS) || exit 1; done

failover-drill: release
	target/release/raft-drill --start --fault kill --trials $(TRIALS)
	target/release/raft-drill --start --fault freeze --trials $(TRIALS)
	target/release/raft-drill --start --fault isolate --trials $(TRIALS)

# Replace member 1 (leading) by 4 and 2 by 5, then two rolling restarts
# (with and without the hand-over at SIGTERM), under write load.
membership-drill: release
	target/release/raft-drill --start --membership

fuzz:
	tools/fuzz.sh $(FUZZ_SECS)

# Every fuzz target for a fixed number of runs from the kept seeds (about
# 20 s each): what .ci/run runs after make test.
fuzz-short:
	tools/fuzz.sh --short

# Mutation testing: driver, leader, follower, candidate, progress, quorum,
# node, in that order, until the budget is spent (docs/mutants.md).
mutants:
	tools/mutants.sh

bench: bench-proto bench-server

bench-proto:
	$(CARGO) bench -p raft-proto --bench proto

# SET throughput and latency with 1, 16 and 64 clients, GET throughput, and
# idle CPU and memory, on a temporary 3-node cluster on loopback.
bench-server: release
	tools/bench-server.sh

# The loop-budget rows (tests/budgets.rs) with their numbers: each row
# asserts no election and no lost write; this prints each member's longest
# loop turn and its slow-turn lines.
bench-stall: release
	cargo test --release -p raft-server --test budgets -- --nocapture --test-threads=1 2>&1 \
		| grep -oE 'stall-row.*|^  n[0-9].*|^test result.*'

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

cluster: release
	tools/cluster.sh start

stop:
	tools/cluster.sh stop

clean:
	$(CARGO) clean
	rm -rf data
