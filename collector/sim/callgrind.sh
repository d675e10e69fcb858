#!/usr/bin/env bash
# Counts the collector's instructions (valgrind --tool=callgrind) while it ingests a fixed number
# of results from the simulated agents' load mode: AGENTS agents of RESULTS_PER_AGENT results each,
# in batches of MEAN_BATCH on average, one batch in flight per agent. Run it once with 0 results
# for the baseline (start, handshakes, shutdown); per result is the difference over the results.
# Usage: collector/sim/callgrind.sh OUT_DIR MEAN_BATCH RESULTS_PER_AGENT [AGENTS]
# after: CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release \
#          -p egresswatch-collector --bin egresswatch-collector -p egresswatch-sim --bin sim-load
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=$1 MEAN=$2 PER=$3 AGENTS=${4:-10}
target=${CARGO_TARGET_DIR:-target}
BIN=$target/release/egresswatch-collector
LOAD=$target/release/sim-load
rm -rf "$OUT"
mkdir -p "$OUT/data"
"$BIN" ca init --dir "$OUT/data/ca" >/dev/null
for i in $(seq 0 $((AGENTS - 1))); do
    "$BIN" ca issue --dir "$OUT/data/ca" "load-$i" --out "$OUT/certs" >/dev/null
done
cat > "$OUT/collector.toml" <<TOML
data_dir = "$OUT/data"
[quic]
listen = "127.0.0.1:0"
idle_timeout_secs = 300
[http]
listen = "127.0.0.1:0"
TOML
valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
    "$BIN" run --config "$OUT/collector.toml" >"$OUT/stdout" 2>"$OUT/stderr" &
collector=$!
trap 'kill "$collector" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
    [ -s "$OUT/data/ready.json" ] && break
    sleep 0.5
done
addr=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["quic"])' "$OUT/data/ready.json")
"$LOAD" "$addr" "$OUT/data/ca/ca.pem" "$OUT/certs" "$AGENTS" "$PER" "$MEAN"
kill -TERM "$collector"
wait "$collector" || true
trap - EXIT
callgrind_annotate "$OUT/callgrind.out" 2>/dev/null | grep "PROGRAM TOTALS"
echo "per function, inclusive: callgrind_annotate --inclusive=yes $OUT/callgrind.out"
