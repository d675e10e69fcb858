#!/usr/bin/env bash
# The project's test command (README): everything, in one run. Exits non-zero if any part fails.
set -uo pipefail
cd "$(dirname "$0")"
failed=()

step() {
    local name=$1
    shift
    echo "=== $name"
    if ! "$@"; then
        failed+=("$name")
        # A full disk fails every later build in ways that do not say so.
        echo "=== $name failed ($(df -h --output=avail . | tail -n 1 | tr -d ' ') left on the disk)"
    fi
}

# A part whose tools are missing is skipped with the reason; in CI, where .ci/run installed
# everything first, a skip is a failure.
skip() {
    echo "=== $1: skipped ($2)"
    if [ "${CI:-}" = true ]; then failed+=("$1"); fi
}

# Under sudo, PATH has lost ~/.cargo/bin: use the calling user's toolchain.
if ! command -v cargo >/dev/null && [ -n "${SUDO_USER:-}" ]; then
    user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    if [ -x "$user_home/.cargo/bin/cargo" ]; then
        export PATH="$user_home/.cargo/bin:$PATH" CARGO_HOME="$user_home/.cargo" RUSTUP_HOME="$user_home/.rustup"
    fi
fi

# What every test needs (scripts/install-deps): as root it installs what is missing; as a normal
# user it installs what needs no root, names the apt-get line for the rest, and the tests that
# need what is missing skip and say so.
if ! scripts/install-deps test; then
    echo "=== some dependencies are missing (named above): the tests that need them are skipped"
fi

# Binaries first: the lab, end-to-end and deployment tests run the real agent and collector.
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)"; exit 1; }
cargo build --workspace --bins || exit 1
step "rust" cargo test --workspace -- --test-threads=2
if [ -f dashboard/package.json ] && [ -d dashboard/tests ]; then
    if [ -d dashboard/node_modules ] && scripts/install-deps --node-ok; then
        step "dashboard" node --test dashboard/tests/
    elif [ -d dashboard/node_modules ]; then
        skip dashboard "Node.js $(node --version 2>/dev/null) is too old for playwright-core; see above"
    else
        skip dashboard "no dashboard/node_modules: scripts/install-deps test runs npm ci"
    fi
fi
# EGRESSWATCH_E2E=1: the agents the role installed report to the collector the role installed.
if command -v ansible-playbook >/dev/null && command -v ansible-lint >/dev/null; then
    step "ansible" env EGRESSWATCH_E2E=1 bash ansible/tests/run.sh
else
    skip ansible "ansible and ansible-lint are not installed; see above"
fi

# The packages (scripts/package --dev: the agent's static build, the collector's debug one),
# lintian, the units' scores, installed into debootstrapped Debian 11 and 12 trees.
if command -v cargo-deb >/dev/null 2>&1 && command -v cargo-generate-rpm >/dev/null 2>&1; then
    step "packages" bash packaging/tests/run.sh
else
    skip packages "cargo-deb or cargo-generate-rpm is not installed; see above"
fi

# Every fuzz target for a short bounded time (EGRESSWATCH_FUZZ_SECONDS each; the long runs are
# recorded in fuzz/README.md). Needs cargo-fuzz, which scripts/install-deps installs.
if command -v cargo-fuzz >/dev/null 2>&1; then
    step "fuzz" fuzz/run.sh "${EGRESSWATCH_FUZZ_SECONDS:-30}"
else
    skip fuzz "cargo-fuzz is not installed; see above"
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi

