#!/usr/bin/env bash
# Full check: install/verify prerequisites, build everything (the normal build
# also builds the eBPF object via frontend/build.rs), run all tests.
# Tests start real processes on real sockets; they must be parallel-safe, and
# two test threads per binary keep the load reasonable.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null && [[ -f "${CARGO_HOME:-$HOME/.cargo}/env" ]]; then
    # shellcheck disable=SC1091
    . "${CARGO_HOME:-$HOME/.cargo}/env"
fi

scripts/setup.sh

echo "test: cargo build --workspace --bins --tests"
cargo build --workspace --bins --tests

echo "test: cargo test --workspace --no-fail-fast -- --test-threads=2"
cargo test --workspace --no-fail-fast -- --test-threads=2
