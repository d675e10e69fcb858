#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (libFuzzer's -max_total_time), one after the
# other, printing each target's executed-unit count. Exits non-zero if any target crashed, hung or
# failed to build. Usage: fuzz/run.sh SECONDS [TARGET...]
#
# Stable toolchain only: `--sanitizer none` keeps cargo-fuzz off nightly-only -Z flags; coverage
# instrumentation (sancov) and debug assertions (overflow checks) stay on.
set -euo pipefail

seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift || true
cd "$(dirname "$0")/.."

flags=(--sanitizer none -O --debug-assertions)
cargo fuzz build "${flags[@]}"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

mkdir -p fuzz/logs
failed=()
for target in "${targets[@]}"; do
    log="fuzz/logs/$target.log"
    mkdir -p "fuzz/corpus/$target" fuzz/artifacts
    status=0
    cargo fuzz run "${flags[@]}" "$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=1024 \
        >"$log" 2>&1 || status=$?
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -n 1)
    if [ "$status" -eq 0 ]; then
        printf '%-14s %6ss  %12s execs  ok\n' "$target" "$seconds" "${execs:-?}"
    else
        printf '%-14s %6ss  %12s execs  FAILED (exit %s, see %s)\n' \
            "$target" "$seconds" "${execs:-?}" "$status" "$log"
        grep -E 'panicked|ERROR: libFuzzer|Test unit written' "$log" | head -n 5 || true
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} target(s) ran ${seconds}s each without a crash"
