#!/usr/bin/env bash
# The project's test command (README): everything the workspace tests, in one run.
set -euo pipefail
cd "$(dirname "$0")"
# Binaries first: the lab and end-to-end tests run the real agent and collector.
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
