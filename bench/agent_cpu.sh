#!/usr/bin/env bash
# The agent's CPU per probe, counted in instructions by callgrind (stable on a noisy machine):
# `egresswatch-agent run` (release-agent build) under valgrind probes a STARTTLS SMTP server on
# loopback (a small Python server, certificate from a CA made here, verified by the agent) at
# level tls every second, spools every result and streams it to a collector on loopback, until
# the collector stored a number of results; then it is stopped (SIGTERM). Two such runs, SHORT
# and LONG results, and the difference of their instruction counts over the difference of their
# results is the cost of one more result, startup (trust roots, identity, QUIC) taken out.
# Prints the figures and the top functions of the long run. NATIVE=1 runs the agent without
# valgrind instead and counts its CPU seconds (user + system, from /proc/PID/stat), which also
# charge what the kernel does for it (fsync, sockets) that callgrind does not see.
#
# Usage: bench/agent_cpu.sh   env: SHORT=100 LONG=300  PORTS="2525 587"  AGENT=path  COLLECTOR=path
#                                  NATIVE=0  KEEP_WORK=0
# Needs valgrind, python3, openssl. Traffic stays on 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."
SHORT=${SHORT:-100}
LONG=${LONG:-300}
PORTS=${PORTS:-2525 587}
KEEP_WORK=${KEEP_WORK:-0}
NATIVE=${NATIVE:-0}
for tool in valgrind callgrind_annotate python3 openssl; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
TARGET_DIR=$(realpath "${CARGO_TARGET_DIR:-target}")
if [ -z "${AGENT:-}" ]; then
    cargo build --quiet --profile release-agent -p egresswatch-agent
    AGENT="$TARGET_DIR/release-agent/egresswatch-agent"
fi
if [ -z "${COLLECTOR:-}" ]; then
    cargo build --quiet -p egresswatch-collector --bin egresswatch-collector
    COLLECTOR="$TARGET_DIR/debug/egresswatch-collector"
fi

WORK=$(mktemp -d /var/tmp/egresswatch-agent-cpu.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$KEEP_WORK" = 1 ]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The SMTP server's certificate, from a CA the agent is given as probe.ca_file.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=egresswatch bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$WORK/smtp.key" -out "$WORK/smtp.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$WORK/ext"
openssl x509 -req -in "$WORK/smtp.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/ext" -out "$WORK/smtp.pem" 2>/dev/null

cat > "$WORK/smtp.py" <<'PY'
# A STARTTLS SMTP server for the benchmark: greeting, EHLO offering STARTTLS, TLS, EHLO, QUIT.
import socket, ssl, sys, threading
cert, key, port_file = sys.argv[1], sys.argv[2], sys.argv[3]
ports = [int(p) for p in sys.argv[4:]]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)

def serve(conn):
    try:
        conn.settimeout(10)
        f = conn.makefile("rb")
        conn.sendall(b"220 bench ESMTP\r\n")
        tls = False
        while True:
            line = f.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                conn.sendall(b"250-bench\r\n250 STARTTLS\r\n" if not tls else b"250 bench\r\n")
            elif verb == b"STAR":
                conn.sendall(b"220 go ahead\r\n")
                conn = context.wrap_socket(conn, server_side=True)
                f = conn.makefile("rb")
                tls = True
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"502 no\r\n")
    except (OSError, ssl.SSLError):
        pass
    finally:
        conn.close()

def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()

bound = []
for port in ports:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); bound.append(s.getsockname()[1]); s.close()
for port in bound:
    threading.Thread(target=listen, args=(port,), daemon=True).start()
open(port_file, "w").write(" ".join(map(str, bound)))
threading.Event().wait()
PY
python3 "$WORK/smtp.py" "$WORK/smtp.pem" "$WORK/smtp.key" "$WORK/smtp.ports" $PORTS &
PIDS+=($!)
for _ in $(seq 50); do [ -s "$WORK/smtp.ports" ] && break; sleep 0.1; done
SMTP_PORTS=$(tr ' ' ',' < "$WORK/smtp.ports")

# measure RUN RESULTS: a fresh collector and spool, the agent under callgrind until RESULTS are
# stored; writes "instructions results ok" to $WORK/RUN.counts.
measure() {
    local run=$1 want=$2 run_dir="$WORK/$1"
    mkdir -p "$run_dir"
    local QUIC_PORT
    QUIC_PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat > "$run_dir/collector.toml" <<TOML
data_dir = "$run_dir/data"
[quic]
listen = "127.0.0.1:$QUIC_PORT"
[http]
listen = "127.0.0.1:0"
TOML
    "$COLLECTOR" run --config "$run_dir/collector.toml" > "$run_dir/collector.out" 2> "$run_dir/collector.log" &
    local collector_pid=$!
    PIDS+=("$collector_pid")
    for _ in $(seq 100); do grep -q '^HTTP:' "$run_dir/collector.out" 2>/dev/null && break; sleep 0.1; done
    "$COLLECTOR" ca issue --dir "$run_dir/data/ca" bench-agent --out "$run_dir" > /dev/null
    cat > "$run_dir/agent.toml" <<TOML
[collector]
address = "127.0.0.1:$QUIC_PORT"
ca = "$run_dir/data/ca/ca.pem"
cert = "$run_dir/bench-agent.crt"
key = "$run_dir/bench-agent.key"
[labels]
provider = "bench"
account = "bench"
region = "loopback"
instance = "cpu"
[identity]
metadata = false
[[targets]]
host = "127.0.0.1"
ports = [$SMTP_PORTS]
level = "tls"
interval = "1s"
[probe]
timeout = "5s"
min_interval_per_destination = "1s"
ca_file = "$WORK/ca.pem"
[spool]
dir = "$run_dir/spool"
[log]
level = "warn"
TOML
    if [ "$NATIVE" = 1 ]; then
        "$AGENT" run --config "$run_dir/agent.toml" 2> "$run_dir/agent.log" &
    else
        valgrind --tool=callgrind --callgrind-out-file="$run_dir/callgrind.out" \
            "$AGENT" run --config "$run_dir/agent.toml" 2> "$run_dir/agent.log" &
    fi
    local agent_pid=$!
    PIDS+=("$agent_pid")
    local db="$run_dir/data/egresswatch.db"
    # Bounded: at most 20 minutes under valgrind.
    for _ in $(seq 1200); do
        [ "$(stored "$db")" -ge "$want" ] && break
        kill -0 "$agent_pid" 2>/dev/null || { echo "the agent stopped:" >&2; cat "$run_dir/agent.log" >&2; exit 1; }
        sleep 1
    done
    local ir ticks=""
    # utime + stime in clock ticks (fields 14 and 15; the name in field 2 has no spaces here).
    [ "$NATIVE" = 1 ] && ticks=$(awk '{ print $14 + $15 }' "/proc/$agent_pid/stat")
    kill -TERM "$agent_pid"
    wait "$agent_pid" || true
    sleep 1
    kill "$collector_pid" 2>/dev/null || true
    wait "$collector_pid" 2>/dev/null || true
    if [ "$NATIVE" = 1 ]; then
        # In microseconds of CPU, so the arithmetic below reads the same for both modes.
        ir=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", t * 1e6 / hz }')
    else
        callgrind_annotate "$run_dir/callgrind.out" > "$run_dir/annotate.txt" 2>/dev/null
        ir=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }' "$run_dir/annotate.txt")
    fi
    python3 - "$db" "$ir" > "$WORK/$run.counts" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
total = db.execute("select count(*) from results").fetchone()[0]
ok = db.execute("select count(*) from results where outcome = 0").fetchone()[0]
print(sys.argv[2], total, ok)
PY
}
stored() {
    [ -f "$1" ] || { echo 0; return; }
    python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from results").fetchone()[0])' "$1" 2>/dev/null || echo 0
}

measure short "$SHORT"
measure long "$LONG"
read -r IR_S TOTAL_S OK_S < "$WORK/short.counts"
read -r IR_L TOTAL_L OK_L < "$WORK/long.counts"
echo "command: NATIVE=$NATIVE SHORT=$SHORT LONG=$LONG PORTS=\"$PORTS\" bench/agent_cpu.sh  (agent: $AGENT)"
if [ "$NATIVE" = 1 ]; then
    awk -v a="$IR_S" -v b="$IR_L" -v ta="$TOTAL_S" -v tb="$TOTAL_L" 'BEGIN {
        printf "CPU (user + system): short run %.2f s for %d results, long run %.2f s for %d results\n", a / 1e6, ta, b / 1e6, tb;
        printf "CPU seconds per 1,000 extra results (long - short): %.3f\n", (b - a) / (tb - ta) / 1e3 }'
    exit 0
fi
echo "short run: $IR_S instructions, $TOTAL_S results ($OK_S ok over TLS)"
echo "long run:  $IR_L instructions, $TOTAL_L results ($OK_L ok over TLS)"
echo "(the results that are not ok are no_address: the IPv6 series of an IPv4 literal)"
awk -v a="$IR_S" -v b="$IR_L" -v ta="$TOTAL_S" -v tb="$TOTAL_L" -v oa="$OK_S" -v ob="$OK_L" 'BEGIN {
    printf "instructions per result, startup included (long run): %.0f\n", b / tb;
    printf "instructions per extra result (long - short): %.0f\n", (b - a) / (tb - ta);
    if (ob > oa) printf "instructions per extra TLS probe, the no_address results charged to them: %.0f\n", (b - a) / (ob - oa) }'
echo "top functions of the long run (self cost; names need symbols: CARGO_PROFILE_RELEASE_AGENT_STRIP=false):"
# head closes the pipe early: not a failure of the bench.
sed -n '/file:function/,$p' "$WORK/long/annotate.txt" | head -30 || true
