#!/usr/bin/env bash
# Usage: steer-bench.sh TLSFRONT_BIN CLIENT_BIN MODE [XDP_MODE]  (root)
# Namespaces tfbench-a/b, veth, tlsfront (2 workers) in A on 198.18.0.1:8443,
# P client processes in B, each N TLS connections (resuming after the first).
set -euo pipefail
BIN=$1; CLIENT=$2; MODE=$3; XMODE=${4:-generic}; P=${P:-4}; N=${N:-500}
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null || true; ip netns del tfbench-a 2>/dev/null || true; ip netns del tfbench-b 2>/dev/null || true; }
trap cleanup EXIT
cleanup
ip netns add tfbench-a; ip netns add tfbench-b
ip link add tfbench-a0 type veth peer name tfbench-b0
ip link set tfbench-a0 netns tfbench-a; ip link set tfbench-b0 netns tfbench-b
ip -n tfbench-a addr add 198.18.0.1/24 dev tfbench-a0; ip -n tfbench-b addr add 198.18.0.2/24 dev tfbench-b0
for ns in a b; do ip -n tfbench-$ns link set tfbench-${ns}0 up; ip -n tfbench-$ns link set lo up; done
[ "$XMODE" = native ] && ip netns exec tfbench-b ethtool -K tfbench-b0 tx off >/dev/null
D=$(mktemp -d)
ip netns exec tfbench-a "$BIN" run -o net.listen=198.18.0.1:8443 -o worker.count=2 -o net.steering=$MODE \
  -o net.xdp.interface=tfbench-a0 -o net.xdp.mode=$XMODE -o net.steering.fallback=fail -o log.level=warn \
  -o control.socket=$D/s -o cache.path=$D/c -o tickets.path=$D/t > $D/out 2>$D/err & PID=$!
for _ in $(seq 100); do grep -q "tlsfront: ready" $D/out 2>/dev/null && break; sleep 0.1; done
grep steering $D/out
start=$(date +%s.%N)
for _ in $(seq $P); do
  TLSFRONT_STEERING_CLIENT=198.18.0.1:8443,$N ip netns exec tfbench-b "$CLIENT" --exact client_helper_in_netns --nocapture -q > $D/cl.$RANDOM &
done
wait $(jobs -p | grep -v "^$PID$") 2>/dev/null || true
end=$(date +%s.%N)
ok=$(cat $D/cl.* | grep -c "^CONN .* 1$" || true); fail=$(cat $D/cl.* | grep -c "^FAIL" || true)
echo "mode=$MODE${4:+/$XMODE} connections=$ok failed=$fail seconds=$(echo "$end - $start" | bc) cps=$(echo "$ok / ($end - $start)" | bc)"
"$BIN" stats --socket $D/s | grep -E "^counter|^accepted|^resumed_tls13|steer_xdp_steered_here|steer_reuseport_selected|steer_reuseport_fallback"
