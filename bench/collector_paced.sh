#!/usr/bin/env bash
# The collector's cost at bench/compare.sh's pace, counted in instructions by callgrind: one real
# agent (`egresswatch-agent run`) probes five ports of a small Python listener on 127.0.0.1 and on
# ::1 every 20 s at level connect (each address's other family is `no_address`, stored too: about
# one result a second, as compare.sh's agent sends) and reports to the collector (release build)
# running under valgrind.
# After a warm-up of WARMUP seconds, WINDOW seconds are measured; the collector is then stopped
# (SIGTERM) and the run's instruction count printed with its top functions (inclusive). Unlike
# collector/sim/callgrind.sh (a fixed number of results as fast as possible), this charges what
# the collector does per second whatever arrives: its timers, the matrix it publishes, the
# sessions it keeps. NATIVE=1 runs the collector without valgrind and prints its CPU seconds in
# the window instead (user + system, from /proc/PID/stat; 10 ms ticks).
#
# Usage: bench/collector_paced.sh   env: WARMUP=20 WINDOW=60 NATIVE=0 COLLECTOR=path AGENT=path
#                                        KEEP_WORK=0
# after: cargo build --release -p egresswatch-collector --bin egresswatch-collector;
#        cargo build -p egresswatch-agent
# Needs valgrind (unless NATIVE=1), python3, curl. Traffic stays on loopback.
set -euo pipefail

cd "$(dirname "$0")/.."
WARMUP=${WARMUP:-20}
WINDOW=${WINDOW:-60}
NATIVE=${NATIVE:-0}
KEEP_WORK=${KEEP_WORK:-0}
target=$(realpath "${CARGO_TARGET_DIR:-target}")
COLLECTOR=${COLLECTOR:-$target/release/egresswatch-collector}
AGENT=${AGENT:-$target/debug/egresswatch-agent}
# Not under /tmp: the agent refuses a spool there (it must survive a reboot).
WORK=$(mktemp -d /var/tmp/egresswatch-collector-paced.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$KEEP_WORK" = 1 ]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
QUIC_PORT=$(free_port)
"$COLLECTOR" ca init --dir "$WORK/data/ca" >/dev/null
"$COLLECTOR" ca issue --dir "$WORK/data/ca" paced-1 --out "$WORK/agents" >/dev/null
cat > "$WORK/collector.toml" <<TOML
data_dir = "$WORK/data"
[quic]
listen = "127.0.0.1:$QUIC_PORT"
[http]
listen = "127.0.0.1:0"
TOML

# Five listening ports on both loopback addresses that accept and close.
python3 - "$WORK/ports" <<'PY' &
import select, socket, sys
socks = []
for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    for i in range(5):
        s = socket.socket(family)
        s.bind((addr, socks[i].getsockname()[1] if family == socket.AF_INET6 else 0))
        s.listen(64)
        socks.append(s)
with open(sys.argv[1], "w") as f:
    f.write(", ".join(str(s.getsockname()[1]) for s in socks[:5]))
for _ in range(100000):
    ready, _, _ = select.select(socks, [], [], 600)
    if not ready:
        break
    for s in ready:
        conn, _ = s.accept()
        conn.close()
PY
PIDS+=($!)
for _ in $(seq 50); do [ -s "$WORK/ports" ] && break; sleep 0.1; done

if [ "$NATIVE" = 1 ]; then
    "$COLLECTOR" run --config "$WORK/collector.toml" > "$WORK/collector.out" 2> "$WORK/collector.log" &
else
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
        "$COLLECTOR" run --config "$WORK/collector.toml" > "$WORK/collector.out" 2> "$WORK/collector.log" &
fi
COLLECTOR_PID=$!
PIDS+=("$COLLECTOR_PID")
for _ in $(seq 600); do [ -s "$WORK/data/ready.json" ] && break; sleep 0.2; done
[ -s "$WORK/data/ready.json" ] || { echo "collector did not start"; cat "$WORK/collector.log"; exit 1; }

cat > "$WORK/agent.toml" <<TOML
[collector]
address = "127.0.0.1:$QUIC_PORT"
ca = "$WORK/data/ca/ca.pem"
cert = "$WORK/agents/paced-1.crt"
key = "$WORK/agents/paced-1.key"
[labels]
provider = "cloud"
account = "acct"
region = "lab-1"
instance = "paced-1"
[[targets]]
host = "127.0.0.1"
ports = [$(cat "$WORK/ports")]
level = "connect"
interval = "20s"
[[targets]]
host = "::1"
ports = [$(cat "$WORK/ports")]
level = "connect"
interval = "20s"
[probe]
timeout = "5s"
min_interval_per_destination = "1s"
[spool]
dir = "$WORK/spool"
[identity]
metadata = false
TOML
"$AGENT" run --config "$WORK/agent.toml" > "$WORK/agent.log" 2>&1 &
PIDS+=($!)

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$COLLECTOR_PID/stat"; }
sleep "$WARMUP"
c0=$(cpu_ticks)
t0=$(python3 -c 'import time; print(int(time.time() * 1000))')
sleep "$WINDOW"
c1=$(cpu_ticks)
t1=$(python3 -c 'import time; print(int(time.time() * 1000))')
results=$(python3 - "$WORK/data/egresswatch.db" "$t0" "$t1" <<'PY'
import sqlite3, sys
con = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
print(con.execute("SELECT count(*) FROM results WHERE at_ms > ? AND at_ms <= ?",
                  (int(sys.argv[2]), int(sys.argv[3]))).fetchone()[0])
PY
)
kill -TERM "$COLLECTOR_PID"
wait "$COLLECTOR_PID" 2>/dev/null || true
echo "window ${WINDOW} s after ${WARMUP} s of warm-up: $results results stored"
if [ "$NATIVE" = 1 ]; then
    awk -v t=$((c1 - c0)) -v n="$results" 'BEGIN { printf "collector CPU in the window: %.2f s; per 1,000 results %.3f s\n", t / 100, n ? t / 100 / n * 1000 : 0 }'
else
    callgrind_annotate --inclusive=yes "$WORK/callgrind.out" 2>/dev/null \
        | grep -E "PROGRAM TOTALS|egresswatch_collector::" | head -16
fi
