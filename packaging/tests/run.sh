#!/usr/bin/env bash
# Tests of the packages (scripts/package): built from dev-profile binaries (quick; the release
# build differs only in optimisation), checked by lintian and systemd-analyze security, their
# contents listed, then installed into debootstrapped Debian trees, the oldest supported
# (bullseye, 11) and the current one (bookworm, 12):
#   - the agent package installs on both, creates its user, leaves its unit disabled and its
#     conffile in place, and its one portable (static glibc) binary runs on both: --version, and
#     `check` against a listener on loopback (a name through the tree's own NSS config too);
#   - the collector package installs on bookworm and is refused on bullseye (its glibc is too old
#     for an ordinary build made on bookworm, and the package says so);
#   - the collector, started as its unit says inside the bookworm tree, and the agents of both
#     trees, each enrolled with a join token from it (`token create`, `egresswatch-agent enroll`:
#     key, certificate, CA and the package's agent.toml filled in, nothing copied), report over
#     QUIC: both have results on /api/agents/ID/results;
#     SIGHUP (the agent unit's reload) rereads the agent's config and keeps it running;
#   - purging removes the state and the configuration.
#
# Needs root (chroot, network namespaces) for the install part; skipped with a reason otherwise.
# Exits non-zero on any failure and ends with "N passed, N failed, N skipped".
#
# Environment:
#   EGRESSWATCH_ROOTFS_CACHE   where the debootstrap trees are cached (/var/cache/egresswatch-ansible,
#                              shared with ansible/tests/run.sh: the same bookworm tree)
#   EGRESSWATCH_PACKAGES       use the packages in this directory instead of building them
#   EGRESSWATCH_KEEP=1         keep the work directory (logs, trees) after the run
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PREFIX="ewp$$"
WORK=$(mktemp -d "/tmp/${PREFIX}.XXXXXX")
CACHE=${EGRESSWATCH_ROOTFS_CACHE:-/var/cache/egresswatch-ansible}
# The same packages as the Ansible tests' trees, so that bookworm's is one cache for both.
ROOTFS_PACKAGES="python3,systemd,openssl"
SUITES=(bullseye bookworm)
PASSED=0 FAILED=0 SKIPPED=0
PIDS=() NETNS=() MOUNTS=()
SUITE_START=$SECONDS

cleanup() {
    local pid ns mnt
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    done
    for mnt in "${MOUNTS[@]}"; do umount "$mnt" 2>/dev/null || umount -l "$mnt"; done
    for ns in "${NETNS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    if [ "${EGRESSWATCH_KEEP:-0}" = 1 ]; then
        echo "kept $WORK"
    else
        rm -rf --one-file-system "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/logs"
check() {
    local name=$1; shift
    local log="$WORK/logs/$name.log" start=$SECONDS
    if "$@" >"$log" 2>&1; then
        PASSED=$((PASSED + 1)); echo "ok   $name ($((SECONDS - start)) s)"
    else
        FAILED=$((FAILED + 1)); echo "FAIL $name ($((SECONDS - start)) s)"
        tail -n 60 "$log" | sed 's/^/     | /'
    fi
}
skip() { SKIPPED=$((SKIPPED + 1)); echo "skip $1: $2"; }
finish() {
    echo "total $((SECONDS - SUITE_START)) s"
    echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
    [ "$FAILED" -eq 0 ]
    exit
}

# ---------------------------------------------------------------- the packages
PKG=${EGRESSWATCH_PACKAGES:-$WORK/packages}
build() {
    [ -n "${EGRESSWATCH_PACKAGES:-}" ] && { ls -l "$PKG"; return 0; }
    "$REPO/scripts/package" --dev --out "$PKG"
}
check packages_build build
deb() { ls "$PKG"/"$1"_*.deb 2>/dev/null | head -n1; }
rpm_of() { ls "$PKG"/"$1"-*.rpm 2>/dev/null | head -n1; }
for p in egresswatch-agent egresswatch-collector; do
    [ -n "$(deb $p)" ] && [ -n "$(rpm_of $p)" ] || { skip all "no $p package"; finish; }
done

# Each package carries its binary, its config as a conffile, its unit, its user, its manual page.
deb_contents() {
    local p=$1 d
    d=$(deb "$p")
    dpkg-deb --info "$d" && dpkg-deb --contents "$d" || return 1
    local list
    list=$(dpkg-deb --contents "$d" | awk '{print $6}')
    for f in "./usr/bin/$p" "./etc/$p/${p#egresswatch-}.toml" "./usr/lib/systemd/system/$p.service" \
        "./usr/lib/sysusers.d/$p.conf" "./usr/share/man/man1/$p.1.gz" \
        "./usr/share/doc/$p/copyright" "./usr/share/doc/$p/changelog.Debian.gz"; do
        grep -qx -- "$f" <<<"$list" || { echo "missing $f"; return 1; }
    done
    dpkg-deb --ctrl-tarfile "$d" | tar -xO ./conffiles | grep -qx "/etc/$p/${p#egresswatch-}.toml"
}
rpm_contents() {
    local p=$1 r
    r=$(rpm_of "$p")
    rpm -qpi "$r" && rpm -qpl "$r" && rpm -qp --scripts "$r" || return 1
    local list
    list=$(rpm -qpl "$r")
    for f in "/usr/bin/$p" "/etc/$p/${p#egresswatch-}.toml" "/usr/lib/systemd/system/$p.service" \
        "/usr/lib/sysusers.d/$p.conf" "/usr/share/man/man1/$p.1.gz"; do
        grep -qx -- "$f" <<<"$list" || { echo "missing $f"; return 1; }
    done
    rpm -qpc "$r" | grep -qx "/etc/$p/${p#egresswatch-}.toml"
}
# The manual page names every subcommand, and man renders it without a warning.
manpage_complete() {
    local p=$1 page="$WORK/$1.1"
    dpkg-deb --fsys-tarfile "$(deb "$p")" | tar -xO "./usr/share/man/man1/$p.1.gz" | gunzip >"$page" || return 1
    shift
    local sub
    for sub in "$@"; do grep -q "^\.SS \"$sub\"" "$page" || { echo "no section for $sub"; return 1; }; done
    local warnings
    warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$page" 2>&1 >/dev/null)
    [ -z "$warnings" ] || { echo "$warnings"; return 1; }
}
for p in egresswatch-agent egresswatch-collector; do
    check "${p}_deb_contents" deb_contents "$p"
    check "${p}_rpm_contents" rpm_contents "$p"
done
check egresswatch-agent_manpage_complete manpage_complete egresswatch-agent check run enroll
check egresswatch-collector_manpage_complete manpage_complete egresswatch-collector \
    ca "ca init" "ca issue" "ca revoke" "ca list" token "token create" "token list" "token revoke" run

lintian_clean() {
    command -v lintian >/dev/null || { echo "lintian is not installed"; return 1; }
    lintian --fail-on error,warning --info "$(deb "$1")"
}
for p in egresswatch-agent egresswatch-collector; do check "${p}_lintian_clean" lintian_clean "$p"; done

# The units' exposure as systemd-analyze scores it (packaging/README.md records the figures):
# 0 is the best, 10 the worst; anything above 2.0 is a regression of the hardening.
unit_score() {
    local unit=$REPO/packaging/${1#egresswatch-}/$1.service out score
    out=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1) || { echo "$out"; return 1; }
    echo "$out"
    score=$(sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p' <<<"$out")
    echo "score: $score"
    awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }'
}
if systemd-analyze security --help 2>/dev/null | grep -q -- --offline; then
    for p in egresswatch-agent egresswatch-collector; do check "${p}_unit_exposure_at_most_2" unit_score "$p"; done
else
    skip unit_exposure "this systemd-analyze has no --offline (systemd 252 or newer)"
fi

# ---------------------------------------------------------------- installed into Debian trees
if [ "$(id -u)" != 0 ]; then
    skip install "needs root (chroot, debootstrap, network namespaces)"
    finish
fi
for tool in debootstrap ip python3; do
    command -v "$tool" >/dev/null || { skip install "missing $tool"; finish; }
done

# The Debian mirror apt already uses (deb822 sources first, then the one-line format).
debian_mirror() {
    local uri
    uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' |
        grep -v -- '-security' | head -n1)
    [ -n "$uri" ] || uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' |
        grep -v -- '-security' | head -n1)
    echo "${uri:-http://deb.debian.org/debian}"
}
# Built once and cached, as ansible/tests/run.sh does (same directory, same marker).
rootfs_cached() {
    local suite=$1 tree="$CACHE/$1-minbase"
    if [ -f "$tree/.egresswatch-packages" ] &&
        [ "$(cat "$tree/.egresswatch-packages")" = "$ROOTFS_PACKAGES" ]; then
        echo "cached: $tree"; return 0
    fi
    mkdir -p "$CACHE"
    local tmp="$CACHE/$suite-minbase.tmp.$$"
    rm -rf "$tmp"
    timeout 900 debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" "$suite" "$tmp" \
        "$(debian_mirror)" || { rm -rf "$tmp"; return 1; }
    echo "$ROOTFS_PACKAGES" >"$tmp/.egresswatch-packages"
    rm -rf "$tree" && mv "$tmp" "$tree"
}
for suite in "${SUITES[@]}"; do
    check "rootfs_${suite}_cached" rootfs_cached "$suite"
    [ -d "$CACHE/$suite-minbase" ] || { skip install "no $suite tree"; finish; }
    cp -a "$CACHE/$suite-minbase" "$WORK/$suite"
    mkdir -p "$WORK/$suite/tmp/pkg" && cp "$PKG"/*.deb "$WORK/$suite/tmp/pkg/"
    # What an installed system has and debootstrap leaves out: the static agent resolves names
    # with the glibc linked into it, from the tree's own nsswitch.conf and hosts.
    [ -e "$WORK/$suite/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$WORK/$suite/etc/hosts"
    # ...and /proc, which bullseye's systemd-sysusers (in the postinst) needs to write /etc/passwd.
    mount -t proc proc "$WORK/$suite/proc" && MOUNTS+=("$WORK/$suite/proc")
done
in_tree() { local root=$1; shift; chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"; }

# Installing: the user, the conffile, the unit known and disabled, nothing started.
install_agent() {
    local root="$WORK/$1"
    in_tree "$root" dpkg -i "/tmp/pkg/$(basename "$(deb egresswatch-agent)")" || return 1
    in_tree "$root" dpkg-query -W -f='${Status} ${Version}\n' egresswatch-agent
    in_tree "$root" getent passwd egresswatch-agent | grep -q ':/nonexistent:' || { echo "no system user"; return 1; }
    [ "$(in_tree "$root" stat -c '%a %U %G' /etc/egresswatch-agent)" = "770 root egresswatch-agent" ] || return 1
    [ -f "$root/usr/lib/systemd/system/egresswatch-agent.service" ] || { echo "no unit"; return 1; }
    local enabled
    enabled=$(systemctl --root="$root" is-enabled egresswatch-agent.service 2>&1)
    echo "is-enabled: $enabled"
    [ "$enabled" = disabled ] || return 1
    ! ls "$root"/etc/systemd/system/*.wants/egresswatch-agent.service 2>/dev/null
}
# One binary: --version, then `check` against loopback listeners, by address and by name (the
# tree's /etc/hosts through the static binary's NSS), in a network namespace of its own.
agent_runs() {
    local suite=$1 root="$WORK/$1" ns="${PREFIX}${1:0:5}"
    in_tree "$root" egresswatch-agent --version || return 1
    ip netns add "$ns" && NETNS+=("$ns") && ip -n "$ns" link set lo up || return 1
    ip netns exec "$ns" python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 2525)); s.listen(16)
end = time.time() + 120
s.settimeout(1)
while time.time() < end:
    try:
        c, _ = s.accept(); c.sendall(b"220 lab ESMTP\r\n"); c.close()
    except socket.timeout:
        pass
' &
    PIDS+=($!)
    sleep 0.5
    local out rc
    for host in 127.0.0.1 localhost; do
        # Exit status 1: a port failed (2526 is meant to); 2 and above: the check itself failed.
        out=$(ip netns exec "$ns" chroot "$root" /usr/bin/egresswatch-agent check "$host" -p 2525 -p 2526 \
            --level banner --timeout 3s --family ipv4 --json)
        rc=$?
        echo "$out"
        [ "$rc" -le 1 ] || { echo "check exited $rc"; return 1; }
        python3 - "$out" <<'PY' || return 1
import json, sys
by_port = {r["port"]: r for r in json.loads(sys.argv[1])}
# 2525 answers with a banner; nothing listens on 2526.
assert by_port[2525]["outcome"] == "ok" and by_port[2525]["address"] == "127.0.0.1", by_port[2525]
assert by_port[2526]["outcome"] == "refused", by_port[2526]
PY
    done
}
for suite in "${SUITES[@]}"; do
    check "agent_installs_disabled_on_$suite" install_agent "$suite"
    check "agent_binary_runs_on_$suite" agent_runs "$suite"
done

collector_refused_on_bullseye() {
    local out
    if out=$(in_tree "$WORK/bullseye" dpkg -i "/tmp/pkg/$(basename "$(deb egresswatch-collector)")" 2>&1); then
        echo "$out"; echo "installed, though its glibc is too old"; return 1
    fi
    echo "$out"
    grep -q 'depends on libc6 (>= 2\.3[4-9]' <<<"$out" && in_tree "$WORK/bullseye" dpkg --purge egresswatch-collector
}
install_collector() {
    local root="$WORK/bookworm"
    in_tree "$root" dpkg -i "/tmp/pkg/$(basename "$(deb egresswatch-collector)")" || return 1
    in_tree "$root" getent passwd egresswatch-collector | grep -q ':/nonexistent:' || return 1
    [ "$(systemctl --root="$root" is-enabled egresswatch-collector.service 2>&1)" = disabled ] || return 1
    in_tree "$root" egresswatch-collector --version
}
check collector_refused_on_bullseye collector_refused_on_bullseye
check collector_installs_disabled_on_bookworm install_collector

# ---------------------------------------------------------------- reporting
# Starts a service as its unit says (ExecStart=, User=, Group=, StateDirectory= made as systemd
# would), inside its tree, in namespace NS.
start_from_unit() {
    local root=$1 unit=$2 ns=$3 log=$4 exec user group state
    local file="$root/usr/lib/systemd/system/$unit"
    exec=$(sed -n 's/^ExecStart=//p' "$file")
    user=$(sed -n 's/^User=//p' "$file")
    group=$(sed -n 's/^Group=//p' "$file")
    state=$(sed -n 's/^StateDirectory=//p' "$file")
    [ -n "$exec" ] && [ -n "$user" ] && [ -n "$state" ] || { echo "$unit: no ExecStart/User/StateDirectory"; return 1; }
    install -d -m 0700 -o "$(in_tree "$root" id -u "$user")" -g "$(in_tree "$root" id -g "$group")" "$root/var/lib/$state"
    # shellcheck disable=SC2086 # ExecStart is split into words, as systemd does for it.
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin RUST_LOG=info ip netns exec "$ns" \
        chroot --userspec="$user:$group" "$root" $exec >"$log" 2>&1 &
    PIDS+=($!)
    echo "started $unit in $ns as $user: pid $!"
}
# Waits until the collector in NS has stored results from agent ID (/api/agents/ID/results).
collector_has_results_from() {
    local ns=$1 id=$2 deadline=$((SECONDS + 90)) body=""
    while [ $SECONDS -lt $deadline ]; do
        body=$(ip netns exec "$ns" python3 - "$id" <<'PY' 2>&1
import json, sys, urllib.request
url = "http://127.0.0.1:8080/api/agents/%s/results" % sys.argv[1]
with urllib.request.urlopen(url, timeout=5) as r:
    results = json.load(r)
print(json.dumps(results[:2]))
sys.exit(0 if results else 1)
PY
        ) && { echo "$id: $body"; return 0; }
        sleep 1
    done
    echo "$id: last answer: $body"
    return 1
}
reporting() {
    local ns="${PREFIX}lab" c="$WORK/bookworm" suite
    start_from_unit "$c" egresswatch-collector.service "$ns" "$WORK/logs/collector.out" || return 1
    local deadline=$((SECONDS + 30))
    until [ -s "$c/var/lib/egresswatch-collector/ca/ca.pem" ]; do
        [ $SECONDS -lt $deadline ] || { cat "$WORK/logs/collector.out"; return 1; }
        sleep 0.5
    done
    for suite in "${SUITES[@]}"; do
        local a="$WORK/$suite" id="pkg-$suite" token
        # The operator's two commands: a token on the collector, `enroll` on the VM (here the
        # agent's tree, in the collector's namespace), as root, with nothing copied by hand.
        token=$(in_tree "$c" egresswatch-collector token create --uses 1 --expires 10m \
            --label provider=lab --label "account=$suite") || return 1
        ip netns exec "$ns" chroot "$a" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C \
            egresswatch-agent enroll --collector 127.0.0.1:4433 --token "$token" --name "$id" || return 1
        [ "$(in_tree "$a" stat -c '%a %U' /etc/egresswatch-agent/agent.key)" = "600 egresswatch-agent" ] || {
            in_tree "$a" ls -l /etc/egresswatch-agent; echo "agent.key is not 0600 egresswatch-agent"; return 1
        }
        grep -q '^address = "127.0.0.1:4433"' "$a/etc/egresswatch-agent/agent.toml" || return 1
        # Only for the test: a target on this namespace's loopback, so that results flow at once.
        sed -i 's/^# \[\[targets\]\]/[[targets]]/; s/^# host = .*/host = "127.0.0.1"/; s/^# ports = .*/ports = [2525, 443]/; s/^# level = .*/level = "connect"/; s/^# interval = .*/interval = "15s"/' \
            "$a/etc/egresswatch-agent/agent.toml"
        sed -i 's/^\[identity\]//' "$a/etc/egresswatch-agent/agent.toml"
        printf '\n[identity]\nmetadata = false\n' >>"$a/etc/egresswatch-agent/agent.toml"
        start_from_unit "$a" egresswatch-agent.service "$ns" "$WORK/logs/agent-$suite.out" || return 1
    done
    for suite in "${SUITES[@]}"; do
        collector_has_results_from "$ns" "pkg-$suite" || {
            tail -n 30 "$WORK/logs/collector.out" "$WORK/logs/agent-$suite.out"; return 1
        }
    done
}
# The unit's ExecReload: SIGHUP rereads agent.toml, the agent keeps running.
reload() {
    # The last process started: the newest suite's agent (chroot execs it, the PID stays).
    local pid=${PIDS[-1]}
    kill -HUP "$pid" || return 1
    local deadline=$((SECONDS + 10))
    until grep -q 'SIGHUP: reloading' "$WORK/logs/agent-${SUITES[-1]}.out"; do
        [ $SECONDS -lt $deadline ] || { tail "$WORK/logs/agent-${SUITES[-1]}.out"; return 1; }
        sleep 0.2
    done
    sleep 1
    kill -0 "$pid"
}
ip netns add "${PREFIX}lab" && NETNS+=("${PREFIX}lab") && ip -n "${PREFIX}lab" link set lo up
check agents_on_both_suites_report_to_the_packaged_collector reporting
check agent_reload_is_sighup reload

# ---------------------------------------------------------------- purge
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    PIDS=()
}
purge() {
    local root="$WORK/$1" p=$2
    [ -d "$root/var/lib/$p" ] || { echo "no state to purge in $root/var/lib/$p"; return 1; }
    in_tree "$root" dpkg --purge "$p" || return 1
    for f in "/var/lib/$p" "/etc/$p" "/usr/bin/$p" "/usr/lib/systemd/system/$p.service"; do
        [ ! -e "$root$f" ] || { echo "$f left behind"; return 1; }
    done
}
stop_all
for suite in "${SUITES[@]}"; do check "agent_purge_removes_state_on_$suite" purge "$suite" egresswatch-agent; done
check collector_purge_removes_state_on_bookworm purge bookworm egresswatch-collector
finish
