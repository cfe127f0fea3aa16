#!/usr/bin/env bash
# Full check: install/verify prerequisites, build everything (the normal build
# also builds the eBPF object via frontend/build.rs), run all tests.
# Tests start real processes on real sockets; they must be parallel-safe, and
# two test threads per binary keep the load reasonable.
#
# - The criterion benches (bench/benches) and the libFuzzer targets (fuzz/,
#   its own workspace) are compiled, so that neither can rot unnoticed; the
#   fuzz targets' entry points run on their seeds in
#   tests/tests/fuzz_regressions.rs.
# - Unit tests run against the debug build; the end-to-end suite (tests/)
#   runs once, against the release binary users run (TLSFRONT_BIN).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null && [[ -f "${CARGO_HOME:-$HOME/.cargo}/env" ]]; then
    # shellcheck disable=SC1091
    . "${CARGO_HOME:-$HOME/.cargo}/env"
fi

scripts/setup.sh

# Formatting first: cheap, and a tree that is not rustfmt-clean fails here
# with the files named rather than in review.
echo "test: cargo fmt --all -- --check"
cargo fmt --all -- --check

echo "test: cargo build --workspace --bins --tests --benches"
cargo build --workspace --bins --tests --benches

# Stable toolchain, no sanitizer: only that the targets still compile against
# tlsfront::fuzzing (scripts/fuzz.sh runs them with nightly). No eBPF needed.
# Its own target dir, so the different AYA_BUILD_SKIP never invalidates the
# main build (cold: about 70 s on 2 CPUs, libFuzzer's C++ included; warm: 1 s).
# --locked: fuzz/Cargo.lock is committed, and a check that rewrote it would
# leave the tree dirty (bench/compare.sh refuses to publish from one).
echo "test: cargo check --locked --manifest-path fuzz/Cargo.toml"
if ! AYA_BUILD_SKIP=1 cargo check --locked --manifest-path fuzz/Cargo.toml \
    --target-dir target/fuzz-check; then
    echo "test: fuzz/ does not build; if fuzz/Cargo.lock is stale (a dependency of" >&2
    echo "test: tlsfront changed), refresh it: cargo check --manifest-path fuzz/Cargo.toml" >&2
    exit 1
fi

echo "test: cargo build --release -p tlsfront --bin tlsfront"
cargo build --release -p tlsfront --bin tlsfront

failed=0
echo "test: cargo test --workspace --exclude tlsfront-tests --no-fail-fast -- --test-threads=2"
cargo test --workspace --exclude tlsfront-tests --no-fail-fast -- --test-threads=2 || failed=1

echo "test: TLSFRONT_BIN=target/release/tlsfront cargo test -p tlsfront-tests --no-fail-fast -- --test-threads=2"
TLSFRONT_BIN="$PWD/target/release/tlsfront" \
    cargo test -p tlsfront-tests --no-fail-fast -- --test-threads=2 || failed=1

exit "$failed"
