#!/usr/bin/env bash
# Tests of the Ansible roles: lint, syntax, argument specs, the agents' collector addresses for the
# example inventory, then the playbook applied for real to lab hosts (Debian bookworm trees made
# with debootstrap, reached over the chroot connection): two collectors on one PostgreSQL store
# (vaulted password file, server CA) and two agents; first run, a second run that must change
# nothing, a --check --diff run, refused store settings, the rendered units verified and scored by
# systemd-analyze. With EGRESSWATCH_E2E=1 the agents and the collectors the roles installed are
# started from the files they wrote, in network namespaces made here, one agent pointed at each
# collector, and each must appear in its collector's /api/matrix.
#
# Needs root for the lab part (skipped with a reason otherwise). Exits non-zero on any failure and
# ends with "N passed, N failed, N skipped".
#
# Environment:
#   EGRESSWATCH_E2E=1          also run the agents against the collectors (needs the real binaries)
#   EGRESSWATCH_ROOTFS_CACHE   where the debootstrap tree is cached (/var/cache/egresswatch-ansible)
#   EGRESSWATCH_KEEP=1         keep the work directory (logs, trees) after the run
#   CARGO_TARGET_DIR           honoured by the build play
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ANSIBLE_DIR=$(dirname "$HERE")
REPO_DIR=$(dirname "$ANSIBLE_DIR")
PREFIX="ewa$$"
WORK=$(mktemp -d "/tmp/${PREFIX}.XXXXXX")
CACHE=${EGRESSWATCH_ROOTFS_CACHE:-/var/cache/egresswatch-ansible}
ROOTFS_PACKAGES="python3,systemd,openssl"
PYTHON=/usr/bin/python3
PASSED=0 FAILED=0 SKIPPED=0
PIDS=() NETNS=() PROC_MOUNTS=() PG_DIR="" PG_DATA=""
SUITE_START=$SECONDS

export ANSIBLE_CONFIG="$ANSIBLE_DIR/ansible.cfg"
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 ANSIBLE_RETRY_FILES_ENABLED=0
export ANSIBLE_LOCAL_TEMP="$WORK/ansible-tmp"

cleanup() {
    local pid ns mnt
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    done
    # The lab database: pg_ctl stops the postmaster of this data directory (its PID file).
    if [ -n "$PG_DATA" ]; then
        runuser -u postgres -- "$(pg_bin pg_ctl)" -D "$PG_DATA" stop -m immediate -w -t 30 >/dev/null 2>&1
    fi
    [ -n "$PG_DIR" ] && rm -rf --one-file-system "$PG_DIR"
    for mnt in "${PROC_MOUNTS[@]}"; do umount "$mnt" 2>/dev/null || umount -l "$mnt"; done
    for ns in "${NETNS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    if [ "${EGRESSWATCH_KEEP:-0}" = 1 ]; then
        echo "kept $WORK"
    else
        rm -rf --one-file-system "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Each check: a name, then a command; its output goes to $WORK/logs/NAME.log, shown on failure.
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

# ---------------------------------------------------------------- static checks
lint() { cd "$ANSIBLE_DIR" && timeout 300 ansible-lint --profile production --offline -f pep8; }
syntax() {
    cd "$ANSIBLE_DIR" && timeout 120 ansible-playbook -i inventory/example/hosts.yml --syntax-check site.yml
}
# The example inventory: every agent gets a provider and an account from the groups it sits in
# (provider group, then <provider>_<account> group), and nothing else carries those labels.
example_inventory_labels() {
    cd "$ANSIBLE_DIR" && timeout 120 ansible-inventory -i inventory/example/hosts.yml --list >"$WORK/example-inventory.json" &&
        "$PYTHON" - "$WORK/example-inventory.json" <<'PY'
import json, sys
inv = json.load(open(sys.argv[1]))
hostvars = inv["_meta"]["hostvars"]
def hosts(group):
    g = inv.get(group, {})
    return set(g.get("hosts", [])) | {h for c in g.get("children", []) for h in hosts(c)}
agents = hosts("egresswatch_agents")
assert agents and hosts("egresswatch_collectors"), inv
for provider in inv["egresswatch_agents"]["children"]:
    for account_group in inv[provider]["children"]:
        assert account_group.startswith(provider + "_"), account_group
        for h in hosts(account_group):
            v = hostvars[h]
            want = (provider, account_group[len(provider) + 1:])
            got = (v.get("egresswatch_agent_provider"), v.get("egresswatch_agent_account"))
            assert got == want, (h, got, want)
            print(h, *got)
for h in hosts("egresswatch_collectors") - agents:
    assert "egresswatch_agent_provider" not in hostvars.get(h, {}), h
PY
}
# The agent's [collector] address as the roles render it for the example inventory, on the
# controller alone: both collectors at their egresswatch_collector_advertise_address; without one,
# at ansible_host and the QUIC port (an IPv6 one in brackets); one collector, a plain string.
example_agent_addresses() {
    local play="$WORK/render-agent.yml"
    cat >"$play" <<EOF
- name: Render agent.toml for one example agent, locally
  hosts: aws-prod-web-1
  connection: local
  gather_facts: false
  vars_files:
    - $ANSIBLE_DIR/roles/egresswatch_agent/defaults/main.yml
    - $ANSIBLE_DIR/roles/egresswatch_agent/vars/main.yml
  tasks:
    - name: Render
      delegate_to: localhost
      ansible.builtin.template:
        src: $ANSIBLE_DIR/roles/egresswatch_agent/templates/agent.toml.j2
        dest: "{{ out }}"
        mode: "0600"
EOF
    render() {
        local out=$1; shift
        timeout 120 ansible-playbook -i "$ANSIBLE_DIR/inventory/example/hosts.yml" "$play" \
            -e "out=$out" "$@" >"$out.log" 2>&1 || { cat "$out.log"; return 1; }
        "$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["collector"]["address"])' "$out"
    }
    local got
    got=$(render "$WORK/agent-example.toml") || return 1
    echo "example: $got"
    [ "$got" = "['collector-1.example.org:4433', 'collector-2.example.org:4433']" ] || return 1
    got=$(render "$WORK/agent-fallback.toml" -e egresswatch_collector_advertise_address= \
        -e '{"egresswatch_collector_quic_listen": "[::]:4444"}') || return 1
    echo "no advertise address: $got"
    [ "$got" = "['203.0.113.10:4444', '203.0.113.11:4444']" ] || return 1
    printf '%s\n' 'all: {children: {one_collector: {hosts: {collector-1: {ansible_host: "2001:db8::10"}}}}}' \
        >"$WORK/one-collector.yml"
    got=$(render "$WORK/agent-ipv6.toml" -i "$WORK/one-collector.yml" \
        -e egresswatch_agent_collector_group=one_collector -e egresswatch_collector_advertise_address=) || return 1
    echo "one IPv6 collector: $got"
    [ "$got" = "[2001:db8::10]:4433" ] || return 1
    got=$(render "$WORK/agent-override.toml" -e egresswatch_agent_collector_address=c.example:4433) || return 1
    echo "override: $got"
    [ "$got" = "c.example:4433" ]
}
specs_agree() { "$PYTHON" "$HERE/check_argument_specs.py" "$ANSIBLE_DIR"/roles/*; }
# The consistency check must itself catch a key present on one side only and a changed default.
specs_check_catches_drift() {
    cp -a "$ANSIBLE_DIR/roles/egresswatch_agent" "$WORK/egresswatch_agent"
    echo 'egresswatch_agent_undocumented: 1' >>"$WORK/egresswatch_agent/defaults/main.yml"
    sed -i 's/^egresswatch_agent_probe_concurrency: 16/egresswatch_agent_probe_concurrency: 8/' \
        "$WORK/egresswatch_agent/defaults/main.yml"
    local out
    if out=$("$PYTHON" "$HERE/check_argument_specs.py" "$WORK/egresswatch_agent"); then
        echo "drift not detected"; return 1
    fi
    echo "$out"
    grep -q 'egresswatch_agent_undocumented is in defaults/main.yml but not in' <<<"$out" &&
        grep -q 'egresswatch_agent_probe_concurrency defaults to 8' <<<"$out"
}

for tool in ansible-playbook ansible-lint; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y ansible ansible-lint)"; exit 1; }
done
ansible-doc -t connection community.general.chroot >/dev/null 2>&1 ||
    { echo "missing the community.general collection (Debian's ansible package has it)"; exit 1; }
check ansible_lint_production lint
check syntax_check syntax
check example_inventory_labels_from_groups example_inventory_labels
check example_agents_report_to_every_collector example_agent_addresses
check argument_specs_match_defaults specs_agree
check argument_specs_check_catches_drift specs_check_catches_drift

# ---------------------------------------------------------------- the lab
if [ "$(id -u)" != 0 ]; then
    skip lab "needs root (chroot, debootstrap, network namespaces)"
    finish
fi
for tool in debootstrap systemd-analyze ip cargo; do
    command -v "$tool" >/dev/null || { skip lab "missing $tool"; finish; }
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

# Built once and cached; each lab host gets its own copy.
rootfs_cached() {
    local tree="$CACHE/bookworm-minbase"
    if [ -f "$tree/.egresswatch-packages" ] &&
        [ "$(cat "$tree/.egresswatch-packages")" = "$ROOTFS_PACKAGES" ]; then
        echo "cached: $tree"; return 0
    fi
    mkdir -p "$CACHE"
    local tmp="$CACHE/bookworm-minbase.tmp.$$"
    rm -rf "$tmp"
    timeout 900 debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" bookworm "$tmp" \
        "$(debian_mirror)" || { rm -rf "$tmp"; return 1; }
    echo "$ROOTFS_PACKAGES" >"$tmp/.egresswatch-packages"
    rm -rf "$tree" && mv "$tmp" "$tree"
}
check rootfs_debootstrap_cached rootfs_cached
[ -d "$CACHE/bookworm-minbase" ] || { skip lab "no root filesystem"; finish; }

HOSTS=(ew-collector ew-collector-2 ew-aws-prod-1 ew-hetzner-1)
for host in "${HOSTS[@]}"; do cp -a "$CACHE/bookworm-minbase" "$WORK/$host"; done

# The database's secrets, as an operator keeps them: the password in a file encrypted with
# ansible-vault (its own password in a file the playbook is given), the server's CA as PEM.
PG_PASSWORD="lab-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" >"$WORK/vault-pass"
chmod 600 "$WORK/vault-pass"
printf '%s\n' "$PG_PASSWORD" >"$WORK/pg_password.vault"
lab_secrets() {
    ansible-vault encrypt --vault-password-file "$WORK/vault-pass" "$WORK/pg_password.vault" &&
        grep -q '^\$ANSIBLE_VAULT;' "$WORK/pg_password.vault" &&
        ! grep -q "$PG_PASSWORD" "$WORK/pg_password.vault" &&
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj /CN=egresswatch-lab-db-ca -keyout "$WORK/pg-ca.key" -out "$WORK/pg-ca.pem" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
check lab_secrets_vaulted_password_and_db_ca lab_secrets

# The lab inventory: the example's group_vars/all.yml (binaries and sums from dist/), labels from
# provider and account groups, two collectors on one database at the lab addresses.
INV="$WORK/inventory"
mkdir -p "$INV/group_vars"
cp "$ANSIBLE_DIR/inventory/example/group_vars/all.yml" "$INV/group_vars/all.yml"
cat >"$INV/hosts.yml" <<EOF
all:
  vars:
    ansible_connection: community.general.chroot
    ansible_become: false
  children:
    egresswatch_collectors:
      hosts:
        ew-collector: {ansible_host: "$WORK/ew-collector", egresswatch_collector_advertise_address: "198.18.0.1:4433"}
        ew-collector-2: {ansible_host: "$WORK/ew-collector-2", egresswatch_collector_advertise_address: "198.18.0.4:4433"}
    egresswatch_agents:
      children:
        aws:
          children:
            aws_prod:
              hosts:
                ew-aws-prod-1: {ansible_host: "$WORK/ew-aws-prod-1", egresswatch_agent_region: eu-west-1, lab_collector: "198.18.0.1:4433"}
        hetzner:
          children:
            hetzner_default:
              hosts:
                ew-hetzner-1: {ansible_host: "$WORK/ew-hetzner-1", egresswatch_agent_region: fsn1, lab_collector: "198.18.0.4:4433"}
EOF
printf 'egresswatch_agent_provider: aws\n' >"$INV/group_vars/aws.yml"
printf 'egresswatch_agent_account: prod\n' >"$INV/group_vars/aws_prod.yml"
printf 'egresswatch_agent_provider: hetzner\n' >"$INV/group_vars/hetzner.yml"
printf 'egresswatch_agent_account: default\n' >"$INV/group_vars/hetzner_default.yml"
cat >"$INV/group_vars/egresswatch_collectors.yml" <<EOF
egresswatch_collector_store_kind: postgres
egresswatch_collector_postgres_url: "postgres://egresswatch@198.18.0.1:5432/egresswatch?sslmode=verify-full"
egresswatch_collector_postgres_password_file: "$WORK/pg_password.vault"
egresswatch_collector_postgres_ca: "$WORK/pg-ca.pem"
egresswatch_collector_postgres_pool_size: 4
egresswatch_collector_store_options: {raw_retention_hours: 24}
EOF
# No collector address: the role lists both collectors of the group.
cat >"$INV/group_vars/egresswatch_agents.yml" <<'EOF'
egresswatch_agent_instance: "{{ inventory_hostname }}"
# Lab only: the collector's address, where nothing listens on these ports (refused).
egresswatch_agent_targets:
  - host: 198.18.0.1
    ports: [25, 443]
    level: connect
    interval: 15s
EOF

DIST="$WORK/dist"
PLAYBOOK_ARGS=(-i "$INV/hosts.yml" "$ANSIBLE_DIR/site.yml" -e "egresswatch_dist_dir=$DIST"
    -e "egresswatch_source_dir=$REPO_DIR" -e egresswatch_build_profile_agent=dev
    -e egresswatch_build_profile_collector=dev --vault-password-file "$WORK/vault-pass")

# The build play alone: cargo once on the controller, binaries and sha256 files in dist/.
build() {
    cd "$ANSIBLE_DIR" && timeout 600 ansible-playbook "${PLAYBOOK_ARGS[@]}" --tags egresswatch_build &&
        (cd "$DIST" && sha256sum -c egresswatch-agent.sha256 egresswatch-collector.sha256)
}
check build_play_builds_and_records_sha256 build
[ -x "$DIST/egresswatch-collector" ] || { skip lab "the build play made no binaries"; finish; }

# The real collector's CA: `ca init` must work before anything is deployed.
collector_ca_init_works() {
    local dir="$WORK/ca-probe"
    timeout 60 "$DIST/egresswatch-collector" ca init --dir "$dir" && [ -s "$dir/ca.pem" ] && [ -s "$dir/ca.key" ]
}
check collector_ca_init_works collector_ca_init_works

# Runs the playbook; saves the output; fails unless every host's recap says failed=0 (and,
# with "unchanged", changed=0).
play() {
    local want=$1 log=$2; shift 2
    cd "$ANSIBLE_DIR" || return 1
    timeout 600 ansible-playbook "${PLAYBOOK_ARGS[@]}" "$@" >"$log" 2>&1
    local rc=$?
    cat "$log"
    [ "$rc" = 0 ] || { echo "ansible-playbook exited $rc"; return 1; }
    local recap
    recap=$(sed -n '/^PLAY RECAP/,$p' "$log" | grep -E 'ok=[0-9]+')
    [ -n "$recap" ] || { echo "no recap"; return 1; }
    if grep -vqE 'failed=0 ' <<<"$recap"; then echo "a host failed"; return 1; fi
    if [ "$want" = unchanged ] && grep -vqE 'changed=0 ' <<<"$recap"; then
        echo "expected changed=0 on every host:"; echo "$recap"; return 1
    fi
}
# The dry run the README tells a new operator to start with: fresh hosts, nothing written.
dry_run_fresh() {
    # Ansible's own scratch space (~root/.ansible) is the connection's, not the roles'.
    # Every path, and each file's size and mtime (a directory's mtime moves with scratch files).
    written() {
        (cd "$WORK" && find ew-* -path '*/root/.ansible' -prune -o \
            \( -type d -printf '%p\n' \) -o -printf '%p %s %T@\n' | sort)
    }
    local before
    before=$(written)
    play any "$WORK/logs/dry-run.out" --check --diff || return 1
    diff <(echo "$before") <(written) || { echo "check mode wrote to a host (above)"; return 1; }
}
check check_mode_on_fresh_hosts dry_run_fresh

first_run() { play any "$WORK/logs/run1.out" -v --diff; }
check first_run_deploys_four_hosts first_run

# What the first run left on the hosts.
deployed_as_specified() {
    local c="$WORK/ew-collector" c2="$WORK/ew-collector-2" a="$WORK/ew-aws-prod-1" h="$WORK/ew-hetzner-1" ok=0
    expect() { if eval "$2"; then echo "ok: $1"; else echo "NOT: $1"; ok=1; fi; }
    for r in "$a" "$h"; do
        expect "$r binary matches dist" "cmp -s '$r/usr/local/bin/egresswatch-agent' '$DIST/egresswatch-agent'"
        expect "$r agent user has no login shell" \
            "grep -q '^egresswatch-agent:.*:/usr/sbin/nologin$' '$r/etc/passwd'"
        expect "$r key is 0640 root:egresswatch-agent" \
            "[ \"\$(chroot '$r' stat -c '%a %U %G' /etc/egresswatch-agent/agent.key)\" = '640 root egresswatch-agent' ]"
        expect "$r certificate and CA installed" \
            "grep -q 'BEGIN CERTIFICATE' '$r/etc/egresswatch-agent/agent.crt' && cmp -s '$r/etc/egresswatch-agent/ca.pem' '$c/var/lib/egresswatch-collector/ca/ca.pem'"
        expect "$r unit enabled" \
            "[ -L '$r/etc/systemd/system/multi-user.target.wants/egresswatch-agent.service' ]"
        expect "$r spool private to the agent" \
            "[ \"\$(chroot '$r' stat -c '%a %U' /var/lib/egresswatch-agent)\" = '700 egresswatch-agent' ]"
    done
    expect "labels come from the provider and account groups" "$PYTHON - '$a' '$h' <<'PY'
import sys, tomllib
want = {sys.argv[1]: ('aws', 'prod', 'eu-west-1', 'ew-aws-prod-1'),
        sys.argv[2]: ('hetzner', 'default', 'fsn1', 'ew-hetzner-1')}
for root, labels in want.items():
    with open(root + '/etc/egresswatch-agent/agent.toml', 'rb') as f:
        conf = tomllib.load(f)
    got = conf['labels']
    assert (got['provider'], got['account'], got['region'], got['instance']) == labels, got
    # Both collectors of the group, in the inventory's order.
    assert conf['collector']['address'] == ['198.18.0.1:4433', '198.18.0.4:4433'], conf
    assert conf['targets'] == [{'host': '198.18.0.1', 'ports': [25, 443], 'level': 'connect',
                                'interval': '15s'}], conf['targets']
    assert conf['spool']['dir'] == '/var/lib/egresswatch-agent'
PY"
    expect "collector configs render data_dir, listeners and the shared postgres store" \
        "$PYTHON - '$c' '$c2' <<'PY'
import sys, tomllib
for root in sys.argv[1:]:
    with open(root + '/etc/egresswatch-collector/collector.toml', 'rb') as f:
        conf = tomllib.load(f)
    assert conf['data_dir'] == '/var/lib/egresswatch-collector', conf
    assert conf['quic']['listen'] == '0.0.0.0:4433' and conf['http']['listen'] == '127.0.0.1:8080', conf
    assert conf['quic']['udp_recv_buffer_bytes'] == 4194304 == conf['quic']['udp_send_buffer_bytes'], conf
    assert conf['store'] == {
        'kind': 'postgres',
        'url': 'postgres://egresswatch@198.18.0.1:5432/egresswatch?sslmode=verify-full',
        'password_file': '/etc/egresswatch-collector/postgres-password',
        'ca_file': '/etc/egresswatch-collector/postgres-ca.pem',
        'pool_size': 4,
        'connect_timeout_secs': 5,
        'raw_retention_hours': 24,
    }, conf['store']
ids = []
for root in sys.argv[1:]:
    with open(root + '/etc/egresswatch-collector/collector.toml', 'rb') as f:
        ids.append(tomllib.load(f)['cluster']['id'])
assert len(set(ids)) == 2, ids
PY"
    for r in "$c" "$c2"; do
        expect "$r database password decrypted, 0600 egresswatch-collector" \
            "[ \"\$(chroot '$r' stat -c '%a %U' /etc/egresswatch-collector/postgres-password)\" = '600 egresswatch-collector' ] && [ \"\$(head -n1 '$r/etc/egresswatch-collector/postgres-password')\" = '$PG_PASSWORD' ]"
        expect "$r database CA installed, 0640 root:egresswatch-collector" \
            "cmp -s '$r/etc/egresswatch-collector/postgres-ca.pem' '$WORK/pg-ca.pem' && [ \"\$(chroot '$r' stat -c '%a %U %G' /etc/egresswatch-collector/postgres-ca.pem)\" = '640 root egresswatch-collector' ]"
        expect "$r unit waits for the network, allows TCP out" \
            "grep -qx 'After=network-online.target' '$r/etc/systemd/system/egresswatch-collector.service' && grep -qx 'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' '$r/etc/systemd/system/egresswatch-collector.service' && ! grep -q '^IPAddressDeny=' '$r/etc/systemd/system/egresswatch-collector.service'"
    done
    expect "one fleet CA on both collectors (made on the first, copied to the second)" \
        "cmp -s '$c/var/lib/egresswatch-collector/ca/ca.pem' '$c2/var/lib/egresswatch-collector/ca/ca.pem' && cmp -s '$c/var/lib/egresswatch-collector/ca/ca.key' '$c2/var/lib/egresswatch-collector/ca/ca.key'"
    expect "second collector's CA key is 0600 egresswatch-collector, its CA dir 0700" \
        "[ \"\$(chroot '$c2' stat -c '%a %U' /var/lib/egresswatch-collector/ca/ca.key /var/lib/egresswatch-collector/ca)\" = '600 egresswatch-collector
700 egresswatch-collector' ]"
    expect "no database password in the (verbose, --diff) playbook output" \
        "! grep -q '$PG_PASSWORD' '$WORK/logs/run1.out'"
    expect "socket buffer caps raised for the QUIC socket (applied at boot in an image)" \
        "[ \"\$(grep -cE '^net.core.[rw]mem_max = 4194304\$' '$c/etc/sysctl.d/60-egresswatch-collector.conf')\" = 2 ]"
    expect "CA dir is 0700 egresswatch-collector" \
        "[ \"\$(chroot '$c' stat -c '%a %U' /var/lib/egresswatch-collector/ca)\" = '700 egresswatch-collector' ]"
    expect "CA key is 0600 egresswatch-collector" \
        "[ \"\$(chroot '$c' stat -c '%a %U' /var/lib/egresswatch-collector/ca/ca.key)\" = '600 egresswatch-collector' ]"
    expect "no issued key left on the CA host" \
        "! find '$c/tmp' '$c/var/lib/egresswatch-collector/ca' -name '*.key' ! -name ca.key | grep -q ."
    expect "firewall hint opens UDP 4433" "grep -q 'udp dport 4433 accept' '$c/etc/egresswatch-collector/firewall.nft'"
    expect "collector unit enabled" \
        "[ -L '$c/etc/systemd/system/multi-user.target.wants/egresswatch-collector.service' ]"
    expect "collector unit leaves room for http.max_connections (LimitNOFILE=16384)" \
        "grep -qx 'LimitNOFILE=16384' '$c/etc/systemd/system/egresswatch-collector.service'"
    expect "no private key in the (verbose) playbook output" \
        "! grep -q 'PRIVATE KEY' '$WORK/logs/run1.out'"
    return $ok
}
check deployed_files_users_permissions deployed_as_specified

second_run() { play unchanged "$WORK/logs/run2.out"; }
check second_run_changes_nothing second_run

check_mode() { play unchanged "$WORK/logs/check.out" --check --diff; }
check check_diff_mode_clean_on_deployed_hosts check_mode

# A changed variable shows as a diff in check mode and notifies the handler, which check mode
# skips; applied for real, the handler runs; applied back, the host is as before.
handler_on_change() {
    local conf="$WORK/ew-hetzner-1/etc/egresswatch-agent/agent.toml" before
    before=$(sha256sum <"$conf")
    play any "$WORK/logs/change-check.out" --check --diff --limit ew-hetzner-1 \
        -e egresswatch_agent_probe_timeout=7s || return 1
    grep -q '^+timeout = "7s"' "$WORK/logs/change-check.out" || { echo "no diff shown"; return 1; }
    grep -A2 'RUNNING HANDLER \[egresswatch_agent : Restart egresswatch-agent\]' \
        "$WORK/logs/change-check.out" | grep -q 'skipping: \[ew-hetzner-1\]' ||
        { echo "handler not skipped in check mode"; return 1; }
    [ "$before" = "$(sha256sum <"$conf")" ] || { echo "check mode changed the config"; return 1; }
    play any "$WORK/logs/change-real.out" --limit ew-hetzner-1 \
        -e egresswatch_agent_probe_timeout=7s || return 1
    grep -q '^timeout = "7s"' "$conf" || { echo "config not changed"; return 1; }
    grep -A2 'RUNNING HANDLER \[egresswatch_agent : Restart egresswatch-agent\]' \
        "$WORK/logs/change-real.out" | grep -qE '^(ok|changed): \[ew-hetzner-1\]' ||
        { echo "handler did not run"; return 1; }
    play any "$WORK/logs/change-back.out" --limit ew-hetzner-1 || return 1
    [ "$before" = "$(sha256sum <"$conf")" ] || { echo "config not restored"; return 1; }
}
check change_notifies_handler_skipped_in_check_mode handler_on_change

# Reissuing replaces the certificate and key (made on the CA host, never on the agent) and, even
# verbose and with --diff, shows no key; the new certificate chains to the fleet CA.
reissue() {
    local a="$WORK/ew-hetzner-1/etc/egresswatch-agent" before
    before=$(cat "$a/agent.crt" "$a/agent.key" | sha256sum)
    play any "$WORK/logs/reissue.out" -v --diff --limit ew-hetzner-1 \
        -e egresswatch_agent_reissue_certificate=true || return 1
    [ "$before" != "$(cat "$a/agent.crt" "$a/agent.key" | sha256sum)" ] ||
        { echo "certificate not replaced"; return 1; }
    ! grep -q 'PRIVATE KEY' "$WORK/logs/reissue.out" || { echo "a key was shown"; return 1; }
    openssl verify -CAfile "$a/ca.pem" "$a/agent.crt" &&
        openssl x509 -in "$a/agent.crt" -noout -subject | grep -q 'CN *= *ew-hetzner-1' &&
        [ "$(openssl x509 -in "$a/agent.crt" -noout -pubkey | sha256sum)" = \
            "$(openssl pkey -in "$a/agent.key" -pubout | sha256sum)" ]
}
command -v openssl >/dev/null && check reissue_certificate_shows_no_key reissue

# A binary whose sha256 is not the expected one is refused on the controller; nothing is copied.
bad_sha_refused() {
    local before out
    before=$(sha256sum "$WORK/ew-hetzner-1/usr/local/bin/egresswatch-agent")
    cd "$ANSIBLE_DIR" || return 1
    if out=$(timeout 600 ansible-playbook "${PLAYBOOK_ARGS[@]}" --limit ew-hetzner-1 \
        -e egresswatch_agent_binary_sha256="$(printf '0%.0s' $(seq 64))" 2>&1); then
        echo "$out"; echo "a wrong sha256 was accepted"; return 1
    fi
    echo "$out"
    grep -q 'Nothing was copied' <<<"$out" &&
        [ "$before" = "$(sha256sum "$WORK/ew-hetzner-1/usr/local/bin/egresswatch-agent")" ]
}
check wrong_sha256_is_refused bad_sha_refused

# A label the collector would refuse (over the wire's 128 bytes) stops the play before any change.
long_label_refused() {
    local out
    cd "$ANSIBLE_DIR" || return 1
    if out=$(timeout 600 ansible-playbook "${PLAYBOOK_ARGS[@]}" --limit ew-hetzner-1 \
        -e egresswatch_agent_account="$(printf 'x%.0s' $(seq 129))" 2>&1); then
        echo "$out"; echo "a 129-byte label was accepted"; return 1
    fi
    echo "$out"
    grep -q 'label account must be at most 128 bytes' <<<"$out" &&
        grep -q '^account = "default"' "$WORK/ew-hetzner-1/etc/egresswatch-agent/agent.toml"
}
check over_long_label_is_refused long_label_refused

# Store settings that cannot work stop the play on the collector before any change, each with the
# message that says what to do; a password in the URL is refused without being shown.
store_combinations_refused() {
    local conf="$WORK/ew-collector-2/etc/egresswatch-collector/collector.toml" before out rc=0
    before=$(sha256sum <"$conf")
    cd "$ANSIBLE_DIR" || return 1
    refused() {
        local want=$1; shift
        if out=$(timeout 600 ansible-playbook "${PLAYBOOK_ARGS[@]}" --limit ew-collector-2 "$@" 2>&1); then
            echo "$out"; echo "NOT refused: $*"; rc=1; return
        fi
        if grep -qF -- "$want" <<<"$out"; then echo "refused ($*): $want"; else
            echo "$out"; echo "refused ($*) without: $want"; rc=1
        fi
        ! grep -q 's3cret-in-url' <<<"$out" || { echo "the URL's password was shown"; rc=1; }
    }
    refused 'egresswatch_collector_store_kind is postgres but egresswatch_collector_postgres_url is empty' \
        -e egresswatch_collector_postgres_url=
    refused 'holds a password, which would be readable' \
        -e egresswatch_collector_postgres_url=postgres://egresswatch:s3cret-in-url@198.18.0.1:5432/egresswatch
    refused 'holds a password, which would be readable' \
        -e "egresswatch_collector_postgres_url='host=198.18.0.1 user=egresswatch password=s3cret-in-url'"
    # Two collectors on sqlite: each would keep its own data; and the postgres settings are left.
    out=""
    refused 'each would keep its own database while agents fail over between them' \
        -e egresswatch_collector_store_kind=sqlite
    grep -qF 'is set but egresswatch_collector_store_kind is sqlite' <<<"$out" || { echo "no leftover hint"; rc=1; }
    refused 'value of egresswatch_collector_store_kind must be one of: sqlite, postgres' \
        -e egresswatch_collector_store_kind=mysql
    refused 'egresswatch_collector_store_options must map plain TOML keys' \
        -e '{"egresswatch_collector_store_options": {"raw_retention_hours": [1]}}'
    refused 'and egresswatch_collector_extra_config has one too' \
        -e "{\"egresswatch_collector_extra_config\": \"[store]\\nraw_retention_hours = 1\\n\"}"
    [ "$before" = "$(sha256sum <"$conf")" ] || { echo "a refused run changed the config"; rc=1; }
    return $rc
}
check store_bad_combinations_refused_with_clear_messages store_combinations_refused

# A second collector that holds a CA of its own is not silently switched to the fleet's: agents
# issued by one would be refused by the other. Its CA is put back afterwards.
other_ca_refused() {
    local ca="$WORK/ew-collector-2/var/lib/egresswatch-collector/ca" out
    cp -a "$ca" "$WORK/ca-collector-2.saved" || return 1
    timeout 60 "$DIST/egresswatch-collector" ca init --dir "$WORK/other-ca" >/dev/null || return 1
    cp "$WORK/other-ca/ca.pem" "$ca/ca.pem"
    cd "$ANSIBLE_DIR" || return 1
    out=$(timeout 600 ansible-playbook "${PLAYBOOK_ARGS[@]}" --limit ew-collector-2 2>&1)
    local rc=$?
    echo "$out"
    rm -rf "$ca" && cp -a "$WORK/ca-collector-2.saved" "$ca"
    [ "$rc" != 0 ] && grep -q 'is not the one of ew-collector (egresswatch_collector_ca_host)' <<<"$out"
}
check second_collector_with_another_ca_is_refused other_ca_refused

units_verify() {
    local r rc=0
    for r in ew-aws-prod-1 ew-collector; do
        local unit=egresswatch-agent.service
        [ "$r" = ew-collector ] && unit=egresswatch-collector.service
        # verify prints warnings for units it dislikes and fails on errors; both count here.
        local out
        out=$(systemd-analyze verify --root="$WORK/$r" "/etc/systemd/system/$unit" 2>&1) || rc=1
        echo "$r $unit: ${out:-clean}"
        [ -z "$out" ] || rc=1
    done
    return $rc
}
check systemd_analyze_verify_units units_verify

# Exposure scores (lower is safer; 10 is an unprotected service). Both must stay under 2.0.
EXPOSURE=()
units_exposure() {
    local r unit score rc=0
    for r in ew-aws-prod-1 ew-collector; do
        unit=egresswatch-agent.service
        [ "$r" = ew-collector ] && unit=egresswatch-collector.service
        score=$(systemd-analyze security --offline=yes --root="$WORK/$r" "$unit" 2>&1 |
            sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
        echo "$unit exposure $score"
        EXPOSURE+=("$unit=$score")
        [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s < 2.0) }' || rc=1
    done
    return $rc
}
check systemd_analyze_security_exposure units_exposure
grep -h 'exposure' "$WORK/logs/systemd_analyze_security_exposure.log" | sed 's/^/     /'

# ---------------------------------------------------------------- end to end
if [ "${EGRESSWATCH_E2E:-0}" != 1 ]; then
    skip agents_report_to_both_collectors "set EGRESSWATCH_E2E=1 (needs the real agent and collector)"
    finish
fi

# One namespace for the first collector with a bridge at 198.18.0.1/24, one per agent (.2, .3)
# and one for the second collector (.4) hanging off it.
lab_network() {
    local c="${PREFIX}c" i=2 ns
    ip netns add "$c" && NETNS+=("$c") || return 1
    ip -n "$c" link set lo up
    ip -n "$c" link add br0 type bridge && ip -n "$c" addr add 198.18.0.1/24 dev br0 &&
        ip -n "$c" link set br0 up || return 1
    for ns in "${PREFIX}a1" "${PREFIX}a2" "${PREFIX}c2"; do
        ip netns add "$ns" && NETNS+=("$ns") || return 1
        ip -n "$ns" link set lo up
        ip -n "$c" link add "v$i" type veth peer name eth0 netns "$ns" || return 1
        ip -n "$c" link set "v$i" master br0 && ip -n "$c" link set "v$i" up || return 1
        ip -n "$ns" addr add "198.18.0.$i/24" dev eth0 && ip -n "$ns" link set eth0 up || return 1
        i=$((i + 1))
    done
}

# Starts a service as its unit says (ExecStart=, User=, Group=), inside the host's tree and a
# namespace, the way systemd would: the tree's own binary, config and state directory.
start_from_unit() {
    local root=$1 unit=$2 ns=$3 log=$4 exec user group
    exec=$(sed -n 's/^ExecStart=//p' "$root/etc/systemd/system/$unit")
    user=$(sed -n 's/^User=//p' "$root/etc/systemd/system/$unit")
    group=$(sed -n 's/^Group=//p' "$root/etc/systemd/system/$unit")
    [ -n "$exec" ] && [ -n "$user" ] || { echo "$unit: no ExecStart/User"; return 1; }
    mountpoint -q "$root/proc" || { mount -t proc proc "$root/proc" && PROC_MOUNTS+=("$root/proc"); }
    # shellcheck disable=SC2086 # ExecStart is split into words, as systemd does for it.
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin RUST_LOG=info ip netns exec "$ns" \
        chroot --userspec="$user:$group" "$root" $exec >"$log" 2>&1 &
    PIDS+=($!)
    echo "started $unit in $ns as $user: pid $!"
}

# Waits until the collector in namespace NS lists every provider/account pair given (as
# "provider/account") in its /api/matrix with at least one agent.
matrix_lists() {
    local ns=$1 deadline=$((SECONDS + 150)) body=""; shift
    while [ $SECONDS -lt $deadline ]; do
        local pid
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || { echo "process $pid exited early"; return 1; }
        done
        body=$(ip netns exec "$ns" "$PYTHON" - <<'PY' 2>&1
import json, urllib.request
with urllib.request.urlopen("http://127.0.0.1:8080/api/matrix", timeout=5) as r:
    print(json.dumps(json.load(r)))
PY
        ) && "$PYTHON" - "$body" "$@" <<'PY' && { echo "$ns: $body"; return 0; }
import json, sys
m = json.loads(sys.argv[1])
want = {tuple(pair.split("/")) for pair in sys.argv[2:]}
got = {(p["provider"], a["account"]) for p in m.get("providers", []) for a in p.get("accounts", [])
       if a.get("agents", 0) >= 1}
sys.exit(0 if want <= got else 1)
PY
        sleep 2
    done
    echo "$ns: last /api/matrix answer: $body"
    return 1
}

# The database both collectors are configured for: a throwaway PostgreSQL cluster (Debian's
# initdb, run as the postgres user since the test runs as root) in a directory of its own, serving
# TLS on 198.18.0.1:5432 in the first collector's namespace with a certificate from the lab's
# database CA (sslmode=verify-full checks it), the egresswatch user's password the vaulted one.
pg_bin() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do [ -x "$dir/$1" ] && { echo "$dir/$1"; return; }; done
    command -v "$1"
}
lab_database() {
    local initdb pg_ctl psql
    initdb=$(pg_bin initdb) && pg_ctl=$(pg_bin pg_ctl) && psql=$(pg_bin psql) &&
        [ -n "$initdb" ] && [ -n "$pg_ctl" ] && [ -n "$psql" ] || { echo "no PostgreSQL binaries"; return 1; }
    id postgres >/dev/null 2>&1 || { echo "no postgres user"; return 1; }
    PG_DIR=$(mktemp -d "/tmp/${PREFIX}-pg.XXXXXX") && chown postgres: "$PG_DIR" || return 1
    local data="$PG_DIR/data"
    runuser -u postgres -- "$initdb" -D "$data" -U postgres --auth-local=trust \
        --auth-host=reject >/dev/null || return 1
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=198.18.0.1 \
        -keyout "$data/server.key" -out "$PG_DIR/server.csr" 2>/dev/null &&
        openssl x509 -req -in "$PG_DIR/server.csr" -CA "$WORK/pg-ca.pem" -CAkey "$WORK/pg-ca.key" \
            -CAcreateserial -days 2 -out "$data/server.crt" \
            -extfile <(printf 'subjectAltName=IP:198.18.0.1\n') 2>/dev/null || return 1
    chown postgres: "$data/server.key" "$data/server.crt" && chmod 600 "$data/server.key"
    printf 'hostssl egresswatch egresswatch 198.18.0.0/24 scram-sha-256\n' >>"$data/pg_hba.conf"
    PG_DATA=$data
    ip netns exec "${PREFIX}c" runuser -u postgres -- "$pg_ctl" -D "$data" -l "$PG_DIR/server.log" \
        -w -t 60 -o "-c listen_addresses=198.18.0.1 -c unix_socket_directories=$PG_DIR -c ssl=on" \
        start || { cat "$PG_DIR/server.log"; return 1; }
    local sql="CREATE ROLE egresswatch LOGIN PASSWORD '$PG_PASSWORD'; "
    runuser -u postgres -- "$psql" -h "$PG_DIR" -U postgres -qAt -v ON_ERROR_STOP=1 -c "$sql" &&
        runuser -u postgres -- "$psql" -h "$PG_DIR" -U postgres -qAt -v ON_ERROR_STOP=1 \
            -c 'CREATE DATABASE egresswatch OWNER egresswatch' &&
        echo "PostgreSQL on 198.18.0.1:5432 ($data)"
}
# Tables the collectors made in the shared database: none while they keep SQLite.
lab_database_tables() {
    runuser -u postgres -- "$(pg_bin psql)" -h "$PG_DIR" -U postgres -d egresswatch -qAt \
        -c "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
}

# Each agent is pointed at one collector of its own (the role's single-address form): the aws
# agent at the first, the hetzner one at the second. Its certificate was issued on the first, so
# the second accepting it, and the agent trusting the second's server certificate, is the one
# fleet CA at work on both.
e2e_one_collector_each() {
    play any "$WORK/logs/e2e-agents.out" --limit egresswatch_agents \
        -e '{"egresswatch_agent_collector_address": "{{ lab_collector }}"}' || return 1
    grep -qx 'address = "198.18.0.4:4433"' "$WORK/ew-hetzner-1/etc/egresswatch-agent/agent.toml"
}

e2e() {
    e2e_one_collector_each || { echo "could not point each agent at one collector"; return 1; }
    lab_network || return 1
    lab_database || { echo "could not start the lab database"; return 1; }
    start_from_unit "$WORK/ew-collector" egresswatch-collector.service "${PREFIX}c" \
        "$WORK/logs/collector.out" || return 1
    start_from_unit "$WORK/ew-collector-2" egresswatch-collector.service "${PREFIX}c2" \
        "$WORK/logs/collector-2.out" || return 1
    sleep 2
    start_from_unit "$WORK/ew-aws-prod-1" egresswatch-agent.service "${PREFIX}a1" \
        "$WORK/logs/agent-aws.out" || return 1
    start_from_unit "$WORK/ew-hetzner-1" egresswatch-agent.service "${PREFIX}a2" \
        "$WORK/logs/agent-hetzner.out" || return 1
    if matrix_lists "${PREFIX}c" aws/prod && matrix_lists "${PREFIX}c2" hetzner/default; then
        # On the shared store, each collector's page shows the whole fleet; a collector that
        # keeps SQLite (made no table in the database) shows its own agents only.
        local tables
        tables=$(lab_database_tables) || { echo "could not ask the database"; return 1; }
        echo "tables in the shared database: $tables"
        [ "${tables:-0}" -gt 0 ] || return 0
        matrix_lists "${PREFIX}c" aws/prod hetzner/default &&
            matrix_lists "${PREFIX}c2" aws/prod hetzner/default && return 0
    fi
    local f
    for f in collector collector-2 agent-aws agent-hetzner; do
        echo "--- $f"; tail -n 20 "$WORK/logs/$f.out"
    done
    return 1
}
check agents_report_to_both_collectors e2e
finish
