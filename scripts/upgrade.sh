#!/usr/bin/env bash
# Zero-downtime restart or binary upgrade of a running tlsfront.
#
#   scripts/upgrade.sh OLD_PID NEW_BINARY [run arguments...]
#
# Starts NEW_BINARY with the same arguments (same address, cache file and
# ticket ring) and --takeover, waits until it prints `tlsfront: ready`, then
# sends SIGTERM to OLD_PID, which stops accepting and drains its open
# connections (worker.drain_timeout). Both listen on the address with
# SO_REUSEPORT meanwhile, and with net.ipv4.tcp_migrate_req = 1 (tlsfront
# sets it when net.migrate_requests = 1 and it runs as root) connections
# queued at the old process move to the new one: none is refused. Sessions
# and tickets issued by the old process resume on the new one, since both
# map the same cache file and ticket ring.
#
# The new process runs in the background with its output in
# ${TLSFRONT_LOG:-/tmp/tlsfront-<new pid>.log}; its pid is printed.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 OLD_PID NEW_BINARY [run arguments...]" >&2
    exit 2
fi
old_pid=$1 binary=$2
shift 2
kill -0 "$old_pid" 2>/dev/null || { echo "upgrade: no process $old_pid" >&2; exit 1; }

log=$(mktemp /tmp/tlsfront-upgrade.XXXXXX)
"$binary" run "$@" --takeover >"$log" 2>&1 &
new_pid=$!
for _ in $(seq 1 200); do
    if grep -q '^tlsfront: ready$' "$log"; then
        break
    fi
    if ! kill -0 "$new_pid" 2>/dev/null; then
        echo "upgrade: the new process exited; the old one keeps serving. Its output:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
grep -q '^tlsfront: ready$' "$log" || { echo "upgrade: new process not ready after 20 s" >&2; kill "$new_pid"; exit 1; }
final_log=${TLSFRONT_LOG:-/tmp/tlsfront-$new_pid.log}
[[ $final_log == "$log" ]] || ln -sf "$log" "$final_log"

kill -TERM "$old_pid"
echo "upgrade: new tlsfront pid $new_pid is serving (output: $final_log); old pid $old_pid is draining"
while kill -0 "$old_pid" 2>/dev/null; do sleep 0.1; done
echo "upgrade: old pid $old_pid has exited"
