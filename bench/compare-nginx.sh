#!/usr/bin/env bash
# Renamed: the comparison now covers nginx, HAProxy, hitch and tlsfront and
# lives in bench/compare.sh (options and output: bench/compare.sh --help).
# This wrapper stays for the commands quoted in older notes and passes every
# argument on; with --quick it adds --draft, since a quick run may not be
# published (bench/results/compare-draft.*).
args=("$@")
for a in "$@"; do
    if [[ $a == --quick ]]; then args+=(--draft); break; fi
done
exec "$(dirname "${BASH_SOURCE[0]}")/compare.sh" "${args[@]}"
