#!/usr/bin/env bash
# History figures: bytes on disk per probe result per tier for a simulated fleet stored through
# the SQLite store, and /api/history latency over 90 days of one cell and of a whole provider.
# Usage: bench/history.sh   (env: AGENTS=1000 HOURS=6 BATCH_MINUTES=10 REQUESTS=50)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p egresswatch-collector --example history_bench >&2
target=${CARGO_TARGET_DIR:-target}
"$target/release/examples/history_bench"
