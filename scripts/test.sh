#!/usr/bin/env bash
# The whole test suite: lints, unit/property/stress/process tests, the loom model of the
# ring, and a smoke run of every benchmark (so they never rot; speed is not asserted).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (workspace)"
cargo test --workspace --locked

step "loom model of the ring protocol"
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 \
  cargo test --locked --release -p spate-dataplane --lib --target-dir target/loom ring::loom_tests

step "benchmarks build and run (smoke sizes)"
cargo build --release --locked -p bench -p spate
./target/release/bench ring --round-trips 20000 --frames 200000 --rounds 1 --json target/bench-ring-smoke.json
./target/release/bench hiccup --seconds 0.2
./target/release/bench cluster --reps 1
./target/release/bench net --round-trips 2000 --frames 100000
./target/release/bench vwap --events 200000 --reps 1 --seconds 0.2 --json target/bench-vwap-smoke.json
./target/release/bench bars --events 200000 --reps 1 --seconds 0.2 --json target/bench-bars-smoke.json
./target/release/bench nexmark --events 100000 --latency-rate 20000 --latency-seconds 0.2 --json target/bench-nexmark-smoke.json
./target/release/spate run --events 100000 vwap
