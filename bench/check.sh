#!/usr/bin/env bash
# Benchmark of `egresswatch-agent check`: the stripped size of the small-agent release binary,
# and — as root — the wall time and peak RSS of `check` against a lab address whose five ports
# are silently dropped by an nftables rule on a throwaway "provider edge" namespace (IPv4 and
# IPv6, ten probes). All probes run at once, so the expected wall time is about one timeout.
# A naive sequential probe (bash /dev/tcp under `timeout`, IPv4 only) is shown as the peer.
#
# Needs: cargo; for the namespace part root, iproute2, nftables and GNU time (apt: time).
# Usage: bench/check.sh            (env: CHECK_TIMEOUT=5s, RUNS=3, PEER=1)
set -euo pipefail

cd "$(dirname "$0")/.."
TIMEOUT="${CHECK_TIMEOUT:-5s}"
RUNS="${RUNS:-3}"
PEER="${PEER:-1}"
PORTS=(25 465 587 2525 443)
DEST4=198.19.0.25
DEST6=2001:db8:ee::25

echo "== building: cargo build --profile release-agent -p egresswatch-agent"
cargo build --quiet --profile release-agent -p egresswatch-agent
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$(realpath "$TARGET_DIR/release-agent/egresswatch-agent")"
SIZE_BYTES=$(stat -c %s "$BIN")
SIZE_MIB=$(awk -v b="$SIZE_BYTES" 'BEGIN { printf "%.2f", b / 1048576 }')
STRIPPED=$(file -b "$BIN" 2>/dev/null | grep -o 'not stripped\|stripped' || echo "?")

row() { printf '%-52s %-14s %s\n' "$1" "$2" "$3"; }

if [ "$(id -u)" != 0 ]; then
    echo
    row "figure" "value" "goal"
    row "release-agent binary size ($STRIPPED)" "$SIZE_MIB MiB" "<= 4 MiB"
    echo "SKIP: the dropped-path figures need root (network namespaces, nftables)."
    exit 0
fi
for tool in ip nft /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y iproute2 nftables time)"; exit 1; }
done

# Namespaces of this run only: a prefix with our pid, removed on any exit.
P="ewb$$"
CLIENT="${P}c"
EDGE="${P}e"
cleanup() {
    ip netns del "$CLIENT" 2>/dev/null || true
    ip netns del "$EDGE" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

ip netns add "$CLIENT"
ip netns add "$EDGE"
for ns in "$CLIENT" "$EDGE"; do
    ip -n "$ns" link set lo up
    # No duplicate address detection (link-local included): a SYN lost while an address is
    # still tentative must not pass for the nftables drop being measured.
    ip netns exec "$ns" sh -c 'echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad &&
        echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad'
done
NFT_RULES="
table inet ewbench {
    chain input {
        type filter hook input priority 0; policy accept;
        ip daddr $DEST4 tcp dport { 25, 465, 587, 2525, 443 } drop
        ip6 daddr $DEST6 tcp dport { 25, 465, 587, 2525, 443 } drop
    }
}"
# The destination sits behind an "edge" namespace one hop away, whose nftables input rule drops
# SMTP and HTTPS to it without a word: the provider-block signature.
# Made inside the namespaces, so nothing is ever left in the host's own network.
ip link add "${P}a" netns "$CLIENT" type veth peer name "${P}b" netns "$EDGE"
ip -n "$CLIENT" addr add 198.18.200.1/30 dev "${P}a"
ip -n "$EDGE" addr add 198.18.200.2/30 dev "${P}b"
ip -n "$CLIENT" addr add 2001:db8:ee:1::1/64 dev "${P}a" nodad
ip -n "$EDGE" addr add 2001:db8:ee:1::2/64 dev "${P}b" nodad
ip -n "$CLIENT" link set "${P}a" up
ip -n "$EDGE" link set "${P}b" up
ip -n "$CLIENT" route add 198.18.0.0/15 via 198.18.200.2
ip -n "$CLIENT" -6 route add 2001:db8::/32 via 2001:db8:ee:1::2
ip -n "$EDGE" addr add "$DEST4/32" dev lo
ip -n "$EDGE" addr add "$DEST6/128" dev lo nodad
echo "$NFT_RULES" | ip netns exec "$EDGE" nft -f -

echo "== check $DEST4 $DEST6 (ports ${PORTS[*]}, both families, --timeout $TIMEOUT), $RUNS runs"
WALLS=()
RSSES=()
for run in $(seq 1 "$RUNS"); do
    log="$(mktemp)"
    out="$(mktemp)"
    start=$(date +%s%N)
    set +e
    ip netns exec "$CLIENT" /usr/bin/time -v -o "$log" \
        "$BIN" check "$DEST4" "$DEST6" --timeout "$TIMEOUT" >"$out" 2>&1
    rc=$?
    set -e
    end=$(date +%s%N)
    wall=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", (e - s) / 1e9 }')
    rss_kib=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$log")
    rss=$(awk -v k="$rss_kib" 'BEGIN { printf "%.2f", k / 1024 }')
    timeouts=$(grep -c ' timeout ' "$out" || true)
    echo "run $run: exit $rc, wall $wall s, peak RSS $rss MiB, $timeouts/10 probes timed out"
    if [ "$run" = 1 ]; then sed 's/^/    /' "$out"; fi
    WALLS+=("$wall")
    RSSES+=("$rss")
    rm -f "$log" "$out"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
max() { printf '%s\n' "$@" | sort -n | tail -1; }

PEER_WALL=""
if [ "$PEER" = 1 ]; then
    secs="${TIMEOUT%s}"
    case "$TIMEOUT" in *ms) secs=$(awk -v m="${TIMEOUT%ms}" 'BEGIN { print m / 1000 }') ;; esac
    echo "== peer: sequential bash /dev/tcp under timeout $secs s, IPv4, ports ${PORTS[*]}"
    start=$(date +%s%N)
    for port in "${PORTS[@]}"; do
        ip netns exec "$CLIENT" timeout "$secs" bash -c "exec 3<>/dev/tcp/$DEST4/$port" 2>/dev/null || true
    done
    end=$(date +%s%N)
    PEER_WALL=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", (e - s) / 1e9 }')
fi

echo
row "figure" "value" "goal / peer"
row "release-agent binary size ($STRIPPED)" "$SIZE_MIB MiB" "<= 4 MiB"
row "check wall time, 10 dropped probes (median of $RUNS)" "$(median "${WALLS[@]}") s" "~ one timeout ($TIMEOUT)"
row "check peak RSS (max of $RUNS)" "$(max "${RSSES[@]}") MiB" "<= 8 MiB"
if [ -n "$PEER_WALL" ]; then
    row "peer: sequential /dev/tcp, 5 dropped ports, IPv4" "$PEER_WALL s" "(5 x timeout)"
fi
