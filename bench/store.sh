#!/usr/bin/env bash
# Store figures: results stored per second through Store::insert_results (history tiers on) and
# raw-tier bytes on disk per result, SQLite beside PostgreSQL (a throwaway cluster on this
# machine, Debian's postgresql package), for bench/history.sh's simulated fleet.
# Usage: bench/store.sh   (env: AGENTS=1000 HOURS=2 BATCH_MINUTES=10 SENDERS=8)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p egresswatch-collector --example store_bench >&2
target=${CARGO_TARGET_DIR:-target}
"$target/release/examples/store_bench"
