#!/usr/bin/env bash
# Attribution figures: whether the detector names the layer that changed — one agent, one
# account, a provider, the destination — exactly once, whatever order the evidence arrives in.
# A seeded simulation through the real detector and fan-out planner with a fake clock
# (collector/examples/attribution_sim.rs; engine in collector/tests/support/attribution_sim.rs):
# 13 agents in 5 providers probing "mx" on 587 and the control port 443, the agents'
# confirmations, fan-out answers (late, missing) and agents failing over as the agent and hub
# make them; for each true layer x failure kind (drop, reset, ICMP) x probe interval (1, 10,
# 60 s), CHANGES changes closing 587 at random moments and reopening it. Prints the confusion
# matrix (events by scope per true layer), missing and extra events, and change -> first event
# (median, 95th percentile), then the timelines of the first failures of each cell.
# Usage: bench/attribution.sh   (env: CHANGES=2000 SEED=1 INTERVALS=1,10,60)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p egresswatch-collector --example attribution_sim >&2
target=${CARGO_TARGET_DIR:-target}
"$target/release/examples/attribution_sim" \
    --changes "${CHANGES:-2000}" --seed "${SEED:-1}" --intervals "${INTERVALS:-1,10,60}"
