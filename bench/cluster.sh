#!/usr/bin/env bash
# Several collectors on one PostgreSQL, from one run (a throwaway cluster on this machine,
# Debian's postgresql package): ingest over QUIC with one collector on SQLite, one on
# PostgreSQL and two on one PostgreSQL database side by side, bytes on disk per result, the
# sessions each collector holds to PostgreSQL, and leader failover (SIGKILL, and SIGTERM) with
# three collectors. Usage: bench/cluster.sh
# env: AGENTS=100 BATCHES=40 PER_BATCH=50 WINDOW=4 FAILOVERS=5
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p egresswatch-collector --bin egresswatch-collector --example cluster_bench >&2
target=${CARGO_TARGET_DIR:-target}
"$target/release/examples/cluster_bench" "$target/release/egresswatch-collector"
