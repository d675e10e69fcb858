#!/usr/bin/env bash
# egresswatch side by side with Prometheus' blackbox_exporter, in one run on one lab
# (bench/compare.toml): the agent in one VM and blackbox_exporter (scraped by Prometheus) in a
# second VM of the same provider account do the same probes at the same interval — 25, 465, 587,
# 2525 and 443 over IPv4 and IPv6 to the lab's Postfix, level tls. Measured:
#   1. steady and peak RSS, CPU seconds per 1,000 probes, binary sizes (from /proc; probes
#      counted in the collector's SQLite store and in Prometheus);
#   2. which outcomes each tells apart (timeout, refused, unreachable, stripped STARTTLS,
#      intercepted TLS), from both tools' outputs on a VM behind a filtering edge;
#   3. seconds from a policy flip (the account's 587 to drop) to the alert at a webhook: the
#      collector's generic webhook vs Prometheus rule -> Alertmanager -> webhook;
#   4. wire bytes per probe result (QUIC datagrams vs scrape packets; /probe body sizes);
#   5. collector ingest rate and memory per agent (bench/ingest.sh).
# Prints one table and writes bench/RESULTS.md. Cleans up on any exit.
#
# Needs root, the lab's packages (lab/README.md), prometheus, prometheus-alertmanager,
# prometheus-blackbox-exporter, curl (Debian).
# Usage: sudo bench/compare.sh
#   env: INTERVAL=10 (s, both tools)  PROBE_TIMEOUT=5 (s)  WARMUP=40 (s)  STEADY=300 (s window)
#        ALERT_WAIT=300 (s)  LOSSY=120 (s of LOSS=5 % packet loss before the flip)  PROM_FOR=1m  AM_GROUP_WAIT=30s  INGEST_CONNECTIONS="1000 10000"
#        RESULTS=bench/RESULTS.md  KEEP_WORK=0
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
INTERVAL=${INTERVAL:-10}
PROBE_TIMEOUT=${PROBE_TIMEOUT:-5}
WARMUP=${WARMUP:-40}
STEADY=${STEADY:-300}
ALERT_WAIT=${ALERT_WAIT:-300}
LOSSY=${LOSSY:-120}
LOSS=${LOSS:-5}
PROM_FOR=${PROM_FOR:-1m}
AM_GROUP_WAIT=${AM_GROUP_WAIT:-30s}
INGEST_CONNECTIONS=${INGEST_CONNECTIONS:-1000 10000}
RESULTS=${RESULTS:-bench/RESULTS.md}
KEEP_WORK=${KEEP_WORK:-0}
COMMAND="sudo INTERVAL=$INTERVAL PROBE_TIMEOUT=$PROBE_TIMEOUT WARMUP=$WARMUP STEADY=$STEADY \
LOSSY=$LOSSY LOSS=$LOSS PROM_FOR=$PROM_FOR AM_GROUP_WAIT=$AM_GROUP_WAIT INGEST_CONNECTIONS=\"$INGEST_CONNECTIONS\" bench/compare.sh"

if [ "$(id -u)" != 0 ]; then
    echo "bench/compare.sh needs root: it builds network namespaces and nftables rules (run it with sudo)." >&2
    exit 2
fi
for tool in ip nft python3 curl prometheus prometheus-alertmanager prometheus-blackbox-exporter postfix; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool: apt-get install -y iproute2 nftables python3 curl postfix prometheus prometheus-alertmanager prometheus-blackbox-exporter" >&2
        exit 1
    }
done

LAB="$REPO/lab/egresslab"
PY="$REPO/bench/compare.py"
NAME="cmp$$"
NAME=${NAME:0:10}
WORK=/var/tmp/egresswatch-compare-$NAME
PIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    "$LAB" down --name "$NAME" >/dev/null 2>&1 || true
    if [ "$rc" != 0 ] || [ "$KEEP_WORK" = 1 ]; then
        echo "work directory kept for inspection: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "== $*" >&2; }
meta() { python3 "$PY" meta "$WORK" "$1" "$2"; }
size_of() {
    local b
    b=$(stat -c %s "$1")
    awk -v b="$b" -v f="$(file -b "$1" 2>/dev/null | grep -o 'not stripped\|stripped' || echo '?')" \
        'BEGIN { printf "%.2f MiB (%s)", b / 1048576, f }'
}
# wait_for FILE-TEST SECONDS WHAT
wait_file() {
    for _ in $(seq $(($2 * 10))); do [ -s "$1" ] && return 0; sleep 0.1; done
    echo "timed out waiting for $3" >&2
    return 1
}
in_ns() { local host=$1; shift; "$LAB" exec --name "$NAME" "$host" -- "$@"; }
# For `bg_in_ns HOST CMD... &`: the background subshell becomes CMD (egresslab and `ip netns exec`
# exec too), so $! is the measured process itself, not a shell around it.
bg_in_ns() { local host=$1; shift; exec "$LAB" exec --name "$NAME" "$host" -- "$@"; }

say "building: cargo build --profile release-agent -p egresswatch-agent; cargo build --release -p egresswatch-collector"
cargo build --quiet --profile release-agent -p egresswatch-agent
cargo build --quiet --release -p egresswatch-collector --bin egresswatch-collector
TARGET_DIR=$(realpath "${CARGO_TARGET_DIR:-target}")
AGENT="$TARGET_DIR/release-agent/egresswatch-agent"
COLLECTOR="$TARGET_DIR/release/egresswatch-collector"

rm -rf "$WORK"
mkdir -p "$WORK/agents" "$WORK/prom" "$WORK/am"
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta machine "$(python3 -c '
import json, os, platform
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
print(json.dumps({"nproc": os.cpu_count(), "cpu": cpu, "mem": f"{mem / 1048576:.1f} GiB",
                  "kernel": platform.release(), "load": open("/proc/loadavg").read().split()[0]}))')"
meta versions "$(printf '%s; %s; %s; %s' \
    "$("$AGENT" --version 2>/dev/null | head -1 || echo egresswatch-agent)" \
    "$(prometheus-blackbox-exporter --version 2>&1 | head -1)" \
    "$(prometheus --version 2>&1 | head -1)" \
    "$(prometheus-alertmanager --version 2>&1 | head -1)")"
meta interval_s "$INTERVAL"
meta timeout_s "$PROBE_TIMEOUT"
meta warmup_s "$WARMUP"
meta alert_wait_s "$ALERT_WAIT"
meta prom_for "$PROM_FOR"
meta am_group_wait "$AM_GROUP_WAIT"
meta agent_size "$(size_of "$AGENT")"
meta collector_size "$(size_of "$COLLECTOR")"
meta blackbox_size "$(size_of "$(command -v prometheus-blackbox-exporter)")"
meta prometheus_size "$(size_of "$(command -v prometheus)")"

say "lab up (bench/compare.toml, name $NAME)"
"$LAB" down --name "$NAME" >/dev/null 2>&1 || true
"$LAB" up bench/compare.toml --name "$NAME" --root-link --state "$WORK/lab" > "$WORK/lab.json"
field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$WORK/lab.json" "$1"; }
ROOT_IPV4=$(field 'd["root_link"]["root_ipv4"]')
LAB_CA=$(field 'd["destination"]["ca_file"]')

# --- the egresswatch path: webhook receiver, collector, one agent in ew-1
python3 "$PY" receiver "$WORK/ew-alerts.jsonl" "$WORK/ew-receiver.port" &
PIDS+=($!)
wait_file "$WORK/ew-receiver.port" 10 "the egresswatch webhook receiver"
cat > "$WORK/collector.toml" <<TOML
data_dir = "$WORK/data"
[quic]
listen = "$ROOT_IPV4:4433"
[http]
listen = "127.0.0.1:0"
[[alerts]]
name = "bench-receiver"
kind = "webhook"
url = "http://127.0.0.1:$(cat "$WORK/ew-receiver.port")/"
TOML
"$COLLECTOR" run --config "$WORK/collector.toml" > "$WORK/collector.out" 2> "$WORK/collector.log" &
COLLECTOR_PID=$!
PIDS+=("$COLLECTOR_PID")
for _ in $(seq 100); do grep -q '^HTTP:' "$WORK/collector.out" 2>/dev/null && break; sleep 0.1; done
COLLECTOR_HTTP=$(sed -n 's|^HTTP: *\(http://[^/]*\)/.*|\1|p' "$WORK/collector.out")
[ -n "$COLLECTOR_HTTP" ] || { echo "collector did not start:"; cat "$WORK/collector.log"; exit 1; }
"$COLLECTOR" ca issue --dir "$WORK/data/ca" ew-1 --out "$WORK/agents" >/dev/null
cat > "$WORK/agents/ew-1.toml" <<TOML
[collector]
address = "collector.lab.test:4433"
ca = "$WORK/data/ca/ca.pem"
cert = "$WORK/agents/ew-1.crt"
key = "$WORK/agents/ew-1.key"
[labels]
provider = "cloud"
account = "acct"
region = "lab-1"
instance = "ew-1"
[[targets]]
host = "mx.lab.test"
ports = [25, 465, 587, 2525, 443]
level = "tls"
interval = "${INTERVAL}s"
[probe]
timeout = "${PROBE_TIMEOUT}s"
min_interval_per_destination = "1s"
ca_file = "$LAB_CA"
[spool]
dir = "$WORK/spool"
[identity]
metadata = false
TOML

# --- the Prometheus path, all in bb-1: blackbox_exporter, Prometheus, Alertmanager, receiver
python3 "$PY" blackbox-config "$LAB_CA" "$PROBE_TIMEOUT" "$WORK/blackbox.yml"
bg_in_ns bb-1 python3 "$PY" receiver "$WORK/bb-alerts.jsonl" "$WORK/bb-receiver.port" &
PIDS+=($!)
wait_file "$WORK/bb-receiver.port" 10 "the Alertmanager webhook receiver"
cat > "$WORK/alertmanager.yml" <<YAML
route:
  receiver: bench
  group_by: ['alertname']
  group_wait: $AM_GROUP_WAIT
  group_interval: 5m
  repeat_interval: 4h
receivers:
  - name: bench
    webhook_configs:
      - url: http://127.0.0.1:$(cat "$WORK/bb-receiver.port")/
        send_resolved: false
YAML
cat > "$WORK/rules.yml" <<YAML
groups:
  - name: smtp
    rules:
      - alert: SmtpProbeFailed
        expr: probe_success{job="smtp"} == 0
        for: $PROM_FOR
        labels:
          severity: warning
        annotations:
          summary: "{{ \$labels.instance }} ({{ \$labels.module }}) fails"
YAML
{
    cat <<YAML
global:
  scrape_interval: ${INTERVAL}s
  evaluation_interval: ${INTERVAL}s
alerting:
  alertmanagers:
    - static_configs:
        - targets: ['127.0.0.1:9093']
rule_files:
  - $WORK/rules.yml
scrape_configs:
  - job_name: smtp
    metrics_path: /probe
    static_configs:
YAML
    for family in ipv4 ipv6; do
        for port in 25 465 587 2525 443; do
            case $port in 443) m=tls ;; 465) m=smtps ;; *) m=smtp_starttls ;; esac
            echo "      - targets: ['mx.lab.test:$port']"
            echo "        labels: {module: ${m}_$family, family: $family}"
        done
    done
    cat <<YAML
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [module]
        target_label: __param_module
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: 127.0.0.1:9115
YAML
} > "$WORK/prometheus.yml"

# Byte counters: the agent's QUIC datagrams in ew-1, the scrapes on bb-1's loopback.
in_ns ew-1 nft -f - <<NFT
table inet ewbench {
    counter quic { }
    chain out { type filter hook output priority 0; policy accept; udp dport 4433 counter name "quic"; }
    chain in { type filter hook input priority 0; policy accept; udp sport 4433 counter name "quic"; }
}
NFT
in_ns bb-1 nft -f - <<NFT
table inet ewbench {
    counter scrape { }
    chain out { type filter hook output priority 0; policy accept; tcp dport 9115 counter name "scrape"; tcp sport 9115 counter name "scrape"; }
}
NFT
batches() { curl -fs "$COLLECTOR_HTTP/metrics" | awk '$1 == "egresswatch_ingest_batches_total" { print $2 }'; }
counter_bytes() { in_ns "$1" nft list counter inet ewbench "$2" | sed -n 's/.*bytes \([0-9]*\).*/\1/p'; }

say "starting egresswatch-agent (ew-1) and blackbox_exporter + Prometheus + Alertmanager (bb-1), every ${INTERVAL} s"
bg_in_ns ew-1 "$AGENT" run --config "$WORK/agents/ew-1.toml" > "$WORK/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
bg_in_ns bb-1 prometheus-blackbox-exporter --config.file "$WORK/blackbox.yml" \
    --web.listen-address 127.0.0.1:9115 > "$WORK/blackbox.log" 2>&1 &
BLACKBOX_PID=$!
PIDS+=("$BLACKBOX_PID")
bg_in_ns bb-1 prometheus-alertmanager --config.file "$WORK/alertmanager.yml" \
    --storage.path "$WORK/am" --web.listen-address 127.0.0.1:9093 --cluster.listen-address= \
    > "$WORK/alertmanager.log" 2>&1 &
PIDS+=($!)
# The admin API only for the TSDB snapshot that measures its bytes per probe (loopback in bb-1).
bg_in_ns bb-1 prometheus --config.file "$WORK/prometheus.yml" --storage.tsdb.path "$WORK/prom" \
    --web.enable-admin-api --web.listen-address 127.0.0.1:9090 > "$WORK/prometheus.log" 2>&1 &
PROMETHEUS_PID=$!
PIDS+=("$PROMETHEUS_PID")
sleep 2
for pair in "egresswatch-age:$AGENT_PID" "prometheus-blac:$BLACKBOX_PID" "prometheus:$PROMETHEUS_PID"; do
    comm=$(cat "/proc/${pair#*:}/comm" 2>/dev/null || echo gone)
    [ "$comm" = "${pair%%:*}" ] || { echo "expected ${pair%%:*} as pid ${pair#*:}, found $comm; logs in $WORK" >&2; exit 1; }
done
PIDS_ARGS=("agent=$AGENT_PID" "blackbox=$BLACKBOX_PID" "collector=$COLLECTOR_PID" "prometheus=$PROMETHEUS_PID")
python3 "$PY" sample "$WORK/samples.jsonl" 2 "${PIDS_ARGS[@]}" &
SAMPLER_PID=$!
PIDS+=("$SAMPLER_PID")

say "warm-up ${WARMUP} s, then a ${STEADY} s measuring window"
sleep "$WARMUP"
python3 "$PY" proc "${PIDS_ARGS[@]}" > "$WORK/proc0.json"
BATCHES0=$(batches)
EW_BYTES0=$(counter_bytes ew-1 quic)
BB_BYTES0=$(counter_bytes bb-1 scrape)
sleep "$STEADY"
python3 "$PY" proc "${PIDS_ARGS[@]}" > "$WORK/proc1.json"
BATCHES1=$(batches)
EW_BYTES1=$(counter_bytes ew-1 quic)
BB_BYTES1=$(counter_bytes bb-1 scrape)
kill "$SAMPLER_PID" 2>/dev/null || true
meta wire "{\"ew_bytes\": $((EW_BYTES1 - EW_BYTES0)), \"bb_bytes\": $((BB_BYTES1 - BB_BYTES0)), \"ew_batches\": $((BATCHES1 - BATCHES0))}"
T0_MS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["at_ms"])' "$WORK/proc0.json")
T1_MS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["at_ms"])' "$WORK/proc1.json")
WINDOW_S=$(( (T1_MS - T0_MS) / 1000 ))

# Probes counted where each tool's results land: the collector's store (by probe time) and
# Prometheus' samples (by scrape time) within the window. Results of the last seconds need a
# moment to reach the store.
sleep $((PROBE_TIMEOUT + 3))
count_agent() {
    python3 - "$WORK/data/egresswatch.db" "$T0_MS" "$T1_MS" "$1" <<'PY'
import sqlite3, sys
db, t0, t1, only_ok = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "ok"
con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
sql = "SELECT count(*) FROM results WHERE agent = 'ew-1' AND at_ms > ? AND at_ms <= ?"
rows = con.execute(sql, (t0, t1)).fetchone()[0]
if only_ok:
    # 0 is the wire code of `ok` (wire/src/outcome.rs).
    rows = con.execute(sql + " AND outcome = 0", (t0, t1)).fetchone()[0]
print(rows)
PY
}
prom() { in_ns bb-1 python3 "$PY" prom-query http://127.0.0.1:9090 "$1" "$(awk -v t="$T1_MS" 'BEGIN { printf "%.3f", t / 1000 }')"; }
meta agent_probes "$(count_agent all)"
meta agent_ok "$(count_agent ok)"
meta blackbox_probes "$(prom "sum(count_over_time(probe_success{job=\"smtp\"}[${WINDOW_S}s]))")"
meta blackbox_ok "$(prom "sum(sum_over_time(probe_success{job=\"smtp\"}[${WINDOW_S}s]))")"

# Prometheus' storage per probe: a TSDB snapshot (the head written out as a compacted block:
# chunks, index, tombstones) over every sample appended since start, and the samples one probe
# adds (what the /probe scrape returned plus the 5 series Prometheus adds to every scrape).
SNAPSHOT=$(in_ns bb-1 curl -sf -XPOST http://127.0.0.1:9090/api/v1/admin/tsdb/snapshot \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["name"])' || true)
if [ -n "$SNAPSHOT" ] && [ -d "$WORK/prom/snapshots/$SNAPSHOT" ]; then
    SNAP_BYTES=$(du -sb "$WORK/prom/snapshots/$SNAPSHOT" | cut -f1)
    # Prometheus does not scrape itself here: its own counter, read from its /metrics.
    SAMPLES=$(in_ns bb-1 curl -sf http://127.0.0.1:9090/metrics \
        | awk '/^prometheus_tsdb_head_samples_appended_total/ { n += $NF } END { printf "%.0f", n }')
    PER_PROBE=$(prom "avg(avg_over_time(scrape_samples_scraped{job=\"smtp\"}[${WINDOW_S}s])) + 5")
    meta tsdb "{\"snapshot_bytes\": $SNAP_BYTES, \"samples\": $SAMPLES, \"samples_per_probe\": $PER_PROBE}"
else
    echo "warning: no TSDB snapshot; its bytes per probe are left out" >&2
fi

say "scrape bodies: /probe of each target, plain and gzip"
BODY_ARGS=()
for family in ipv4 ipv6; do
    for port in 25 465 587 2525 443; do
        case $port in 443) m=tls ;; 465) m=smtps ;; *) m=smtp_starttls ;; esac
        BODY_ARGS+=("mx.lab.test:$port=${m}_$family")
    done
done
in_ns bb-1 python3 "$PY" probe-bodies http://127.0.0.1:9115 "$WORK/probe_bodies.json" "${BODY_ARGS[@]}"

say "lossy window: ${LOSS} % packet loss on every link for ${LOSSY} s; counting false alerts"
LOSSY_FROM_MS=$(python3 -c 'import time; print(int(time.time() * 1000))')
"$LAB" loss --name "$NAME" "$LOSS" >/dev/null
sleep "$LOSSY"
"$LAB" loss --name "$NAME" 0 >/dev/null
# Alerts already on their way when the loss ends still count: one probe timeout and a settle.
sleep $((PROBE_TIMEOUT + INTERVAL + 5))
LOSSY_TO_MS=$(python3 -c 'import time; print(int(time.time() * 1000))')
LOSSY_COUNTS=$(python3 "$PY" count-alerts "$LOSSY_FROM_MS" "$LOSSY_TO_MS" "$WORK/ew-alerts.jsonl" "$WORK/bb-alerts.jsonl")
meta lossy "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(secs=int(sys.argv[2]), percent=float(sys.argv[3])); print(json.dumps(d))' "$LOSSY_COUNTS" "$LOSSY" "$LOSS")"

say "policy flip: cloud/acct 587 -> drop; waiting for both alerts (at most ${ALERT_WAIT} s)"
FLIP_MS=$(python3 -c 'import time; print(int(time.time() * 1000))')
"$LAB" rule --name "$NAME" --provider cloud --account acct --port 587 --family both --action drop >/dev/null
python3 "$PY" wait-alerts "$FLIP_MS" "$WORK/ew-alerts.jsonl" "$WORK/bb-alerts.jsonl" "$ALERT_WAIT" "$WORK/alerts.json"

say "outcomes: agent check and blackbox_exporter /probe from edge-1"
bg_in_ns edge-1 prometheus-blackbox-exporter --config.file "$WORK/blackbox.yml" \
    --web.listen-address 127.0.0.1:9115 > "$WORK/blackbox-edge.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do in_ns edge-1 curl -fs -o /dev/null http://127.0.0.1:9115/metrics && break; sleep 0.2; done
in_ns edge-1 python3 "$PY" outcomes "$AGENT" "$LAB_CA" http://127.0.0.1:9115 "$PROBE_TIMEOUT" "$WORK/outcomes.json"

# Where the time went, on each path: when the first failed 587 probe began (probe start in the
# store; scrape start, the sample's timestamp, in Prometheus), and the gaps between failed probes.
meta ew_fail "$(python3 - "$WORK/data/egresswatch.db" "$FLIP_MS" <<'PY'
import json, sqlite3, statistics, sys
con = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
rows = con.execute("SELECT family, at_ms FROM results WHERE agent = 'ew-1' AND port = 587 "
                   "AND outcome != 0 AND at_ms >= ? ORDER BY at_ms", (int(sys.argv[2]),)).fetchall()
gaps = []
for fam in {f for f, _ in rows}:
    ts = [t for f, t in rows if f == fam]
    gaps += [(b - a) / 1000 for a, b in zip(ts, ts[1:])]
print(json.dumps({"first_ms": min((t for _, t in rows), default=None),
                  "median_gap_s": statistics.median(gaps) if gaps else None}))
PY
)"
meta bb_fail "$(in_ns bb-1 python3 "$PY" prom-first-zero http://127.0.0.1:9090 "$FLIP_MS" mx.lab.test:587)"

# The lab is done: stop it before the ingest benchmark, which wants the machine to itself.
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
PIDS=()
"$LAB" down --name "$NAME" >/dev/null 2>&1 || true

say "collector ingest: bench/ingest.sh $INGEST_CONNECTIONS"
# shellcheck disable=SC2086
bench/ingest.sh $INGEST_CONNECTIONS > "$WORK/ingest.txt"
meta ingest_rows "$(python3 -c 'import json,sys; print(json.dumps([l.rstrip() for l in open(sys.argv[1]) if l.startswith("| ") and "figure" not in l]))' "$WORK/ingest.txt")"

python3 "$PY" report "$WORK" "$RESULTS" "$COMMAND"
echo
echo "written: $RESULTS"
