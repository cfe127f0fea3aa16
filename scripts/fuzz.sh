#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer + AddressSanitizer)
# for SECONDS each (default 60), one after the other:
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# - Targets: config, cache_file, ticket_open, packet, client_hello, proxy_header (see
#   frontend/src/fuzzing.rs for what each checks). Default: all.
# - Corpora grow in fuzz/corpus/<target>/ (not in git), seeded from
#   fuzz/seeds/<target>/ and fuzz/regressions/<target>/.
# - A crash (panic, failed assertion, sanitizer report, leak, timeout) is
#   copied from fuzz/artifacts/<target>/ into fuzz/regressions/<target>/,
#   which tests/tests/fuzz_regressions.rs replays in the normal test suite;
#   the script then goes on with the other targets and exits 1.
# - Prints libFuzzer's last status line per target (runs, coverage,
#   features, corpus); the full logs are in fuzz/artifacts/<target>/fuzz.log.
#
# Needs the installed `nightly` toolchain (never installs or updates a
# toolchain); installs cargo-fuzz with it if `cargo +nightly fuzz` is
# missing. The eBPF object is not built for fuzzing (AYA_BUILD_SKIP=1).
# Not part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

if ! command -v cargo >/dev/null && [[ -f "${CARGO_HOME:-$HOME/.cargo}/env" ]]; then
    # shellcheck disable=SC1091
    . "${CARGO_HOME:-$HOME/.cargo}/env"
fi

CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS=(config cache_file ticket_open packet client_hello proxy_header)

say() { printf 'fuzz: %s\n' "$*"; }
die() { printf 'fuzz: error: %s\n' "$*" >&2; exit 2; }

seconds=${1:-60}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || die "SECONDS must be a positive whole number, not '$seconds'"
shift || true
targets=("$@")
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
    [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || die "unknown target '$t' (targets: ${ALL_TARGETS[*]})"
done

rustup toolchain list | grep -q '^nightly-' ||
    die "the rustup toolchain 'nightly' is not installed (this script does not install toolchains)"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz ${CARGO_FUZZ_VERSION} (nightly toolchain; about 2 minutes)"
    cargo +nightly install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

export AYA_BUILD_SKIP=1
# Scratch files of the targets (cache files, ticket ring) on tmpfs, removed
# at exit.
TLSFRONT_FUZZ_DIR=$(mktemp -d /dev/shm/tlsfront-fuzz.XXXXXX)
export TLSFRONT_FUZZ_DIR
trap 'rm -rf "$TLSFRONT_FUZZ_DIR"' EXIT

cd "$root/fuzz"
say "building ${targets[*]} (cargo +nightly fuzz build)"
for t in "${targets[@]}"; do
    cargo +nightly fuzz build "$t" 2>&1 | grep -v '^warning: tlsfront@' >&2
done

failed=()
summary=()
for t in "${targets[@]}"; do
    corpus=corpus/$t
    artifacts=artifacts/$t
    mkdir -p "$corpus" "$artifacts" "regressions/$t"
    log=$artifacts/fuzz.log
    seeds=()
    for d in "seeds/$t" "regressions/$t"; do
        [[ -d $d ]] && [[ -n $(ls -A "$d") ]] && seeds+=("$d")
    done
    before=$(find "$artifacts" -maxdepth 1 -type f ! -name fuzz.log | sort)
    say "running $t for ${seconds}s (corpus fuzz/$corpus, log fuzz/$log)"
    status=0
    cargo +nightly fuzz run "$t" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    # The last status line ("#N DONE cov: ... ft: ... corp: ... exec/s: ...")
    # and the final stats.
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
    summary+=("$t: ${runs:-?} runs in ${seconds}s; last: ${last:-none}")
    new=$(comm -13 <(printf '%s\n' "$before") \
        <(find "$artifacts" -maxdepth 1 -type f ! -name fuzz.log | sort))
    if ((status != 0)) || [[ -n $new ]]; then
        failed+=("$t")
        say "$t FAILED (exit $status); the report:"
        pattern='^(==[0-9]+==ERROR|thread .* panicked|.*deadly signal|ALARM|SUMMARY)'
        if grep -qE "$pattern" "$log"; then
            grep -E -A40 "$pattern" "$log" | head -n 80 >&2 || true
        else
            tail -n 60 "$log" >&2
        fi
        while IFS= read -r f; do
            [[ -n $f ]] || continue
            cp "$f" "regressions/$t/"
            say "kept $f as fuzz/regressions/$t/$(basename "$f") (replayed by tests/tests/fuzz_regressions.rs)"
        done <<<"$new"
    fi
done

say "summary (${seconds}s per target):"
for line in "${summary[@]}"; do say "  $line"; done
if ((${#failed[@]})); then
    say "crashes in: ${failed[*]}"
    exit 1
fi
say "no crash"
