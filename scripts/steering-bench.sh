#!/usr/bin/env bash
# Usage: scripts/steering-bench.sh TLSFRONT TLSLOAD MODE [XDP_MODE]   (root)
#
# Namespaces tfbench-a/b joined by a veth pair, tlsfront (2 workers, pinned to
# CPUs 0 and 1) in A on 198.18.0.1:8443 with net.steering = MODE, and
# `tlsload resume13` in B for SECS seconds. Prints connections/s, the softirq
# time of each CPU during the run (the `softirq` column of /proc/stat, i.e.
# the kernel's receive processing) per 1000 connections, and tlsfront's
# per-worker counters.
#
# Environment:
#   SECS         run length (default 10)
#   THREADS      tlsload threads (default 2), CONC loops per thread (default 4)
#   CLIENT_CPUS  CPU list the clients are pinned to (taskset -c), e.g. 0: on a
#                veth the receive processing of a segment runs on the CPU that
#                sent it, so this forces all of the server's receive
#                processing onto CPU 0 (empty: not pinned)
#   QUEUES       RX/TX queues per veth end (default 1)
set -euo pipefail
BIN=$1; LOAD=$2; MODE=$3; XMODE=${4:-generic}
SECS=${SECS:-10}; THREADS=${THREADS:-2}; CONC=${CONC:-4}; QUEUES=${QUEUES:-1}
CLIENT_CPUS=${CLIENT_CPUS:-}
cleanup() {
    [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null || true
    ip netns del tfbench-a 2>/dev/null || true
    ip netns del tfbench-b 2>/dev/null || true
}
trap cleanup EXIT
cleanup
ip netns add tfbench-a; ip netns add tfbench-b
ip link add tfbench-a0 numtxqueues "$QUEUES" numrxqueues "$QUEUES" type veth \
    peer name tfbench-b0 numtxqueues "$QUEUES" numrxqueues "$QUEUES"
ip link set tfbench-a0 netns tfbench-a; ip link set tfbench-b0 netns tfbench-b
ip -n tfbench-a addr add 198.18.0.1/24 dev tfbench-a0
ip -n tfbench-b addr add 198.18.0.2/24 dev tfbench-b0
for ns in a b; do ip -n tfbench-$ns link set tfbench-${ns}0 up; ip -n tfbench-$ns link set lo up; done
[ "$XMODE" = native ] && ip netns exec tfbench-b ethtool -K tfbench-b0 tx off >/dev/null
D=$(mktemp -d)
ip netns exec tfbench-a "$BIN" run -o net.listen=198.18.0.1:8443 -o worker.count=2 \
    -o net.steering="$MODE" -o net.xdp.interface=tfbench-a0 -o net.xdp.mode="$XMODE" \
    -o net.steering.fallback=fail -o log.level=warn \
    -o control.socket="$D/s" -o cache.path="$D/c" -o tickets.path="$D/t" >"$D/out" 2>"$D/err" &
PID=$!
for _ in $(seq 100); do grep -q "tlsfront: ready" "$D/out" 2>/dev/null && break; sleep 0.1; done
grep -q "tlsfront: ready" "$D/out" || { cat "$D/out" "$D/err"; exit 1; }
grep steering "$D/out"

softirq() { awk '/^cpu[0-9]/ { printf "%s ", $8 }' /proc/stat; }
before=$(softirq)
pin=()
[ -n "$CLIENT_CPUS" ] && pin=(taskset -c "$CLIENT_CPUS")
ip netns exec tfbench-b "${pin[@]}" "$LOAD" resume13 --connect 198.18.0.1:8443 --insecure \
    --threads "$THREADS" --concurrency "$CONC" --duration "$SECS" --server-pid "$PID" | tee "$D/load"
after=$(softirq)
ok=$(awk '/connections ok/ { print $3 }' "$D/load")
hz=$(getconf CLK_TCK)
read -r -a b <<<"$before"; read -r -a a <<<"$after"
line="mode=$MODE${4:+/$XMODE} queues=$QUEUES clients_on=${CLIENT_CPUS:-any} connections=$ok softirq ms per 1000 connections:"
for i in "${!a[@]}"; do
    line+=" cpu$i=$(echo "scale=1; (${a[$i]} - ${b[$i]}) * 1000 / $hz * 1000 / $ok" | bc)"
done
echo "$line"
"$BIN" stats --socket "$D/s" | grep -E "^counter|^accepted|steer_xdp_steered_here|steer_reuseport_selected"
