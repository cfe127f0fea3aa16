#!/usr/bin/env bash
# Renamed: the comparison now covers nginx, HAProxy, hitch and tlsfront and
# lives in bench/compare.sh (options and output: bench/compare.sh --help).
# This wrapper stays for the commands quoted in older notes; it passes every
# argument on.
exec "$(dirname "${BASH_SOURCE[0]}")/compare.sh" "$@"
