#!/usr/bin/env bash
# Runs every test of the project, installing what the tests need first.
# Safe on a fresh Debian 12 machine as root; CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install a Rust toolchain (rustup) first" >&2
    exit 1
fi

step "build and run all tests (unit, integration)"
cargo test --workspace --locked --all-targets 2>&1
