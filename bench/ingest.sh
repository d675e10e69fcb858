#!/usr/bin/env bash
# Ingest figures from one run: wire bytes per result (compact vs JSON), ingest rate with SQLite
# persistence from 100 simulated agents over QUIC on loopback and the collector's CPU per 1,000
# results it ingests (the hub following them included), collector RSS at 1,000 and 10,000
# concurrent agent connections. Usage: bench/ingest.sh [CONNECTIONS...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p egresswatch-collector --bin egresswatch-collector --example ingest_bench >&2
target=${CARGO_TARGET_DIR:-target}
"$target/release/examples/ingest_bench" "$target/release/egresswatch-collector" "$@"
