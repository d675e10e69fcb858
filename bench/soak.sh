#!/usr/bin/env bash
# Fleet soak: the real collector, N simulated agents over QUIC on loopback, SIGKILL + restart of
# the collector every few minutes, 1 agent in 100 sending garbage; checks exactly-once in SQLite
# and prints ingest rate, peak RSS per collector life and ack latency.
# Usage: bench/soak.sh [--agents N] [--minutes M] [--restart-every S] [--batch-every S] [--per-batch K]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p egresswatch-collector --bin egresswatch-collector --example soak >&2
target=${CARGO_TARGET_DIR:-target}
ulimit -n 65536 2>/dev/null || true
exec "$target/release/examples/soak" "$target/release/egresswatch-collector" "$@"
