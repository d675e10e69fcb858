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

# Binaries first: the lab, end-to-end and deployment tests run the real agent and collector.
cargo build --workspace --bins || exit 1
step "rust" cargo test --workspace -- --test-threads=2
if [ -f dashboard/package.json ] && [ -d dashboard/tests ]; then
    if [ -d dashboard/node_modules ]; then
        step "dashboard" node --test dashboard/tests/
    else
        echo "=== dashboard: skipped (run 'npm ci' in dashboard/ first; .ci/run does)"
    fi
fi
# EGRESSWATCH_E2E=1: the agents the role installed report to the collector the role installed.
step "ansible" env EGRESSWATCH_E2E=1 bash ansible/tests/run.sh

# Every fuzz target for a short bounded time (EGRESSWATCH_FUZZ_SECONDS each; the long runs are
# recorded in fuzz/README.md). Needs cargo-fuzz; .ci/run installs it.
if command -v cargo-fuzz >/dev/null 2>&1; then
    step "fuzz" fuzz/run.sh "${EGRESSWATCH_FUZZ_SECONDS:-30}"
else
    echo "=== fuzz: skipped (cargo install cargo-fuzz --version 0.13.2 --locked; .ci/run does)"
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi

