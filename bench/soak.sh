#!/usr/bin/env bash
# Memory soak of a release tlsfront: handshake loops (TLS 1.2 and 1.3, half
# full handshakes, half resumed, each through the built-in upstream) for a
# while, with the process's memory sampled into a CSV.
#
#   bench/soak.sh                  10 minutes, a sample every 10 s
#   bench/soak.sh --secs 30        a short check
#
# options: --secs S (600)  --interval S (10)  --threads N (2)  --port P (28460)
#          --workers N (auto)  --csv FILE  --no-build
#
# The client is tests/src/bin/soak_client.rs (the end-to-end tests' rustls
# client code). CSV columns: elapsed_s, connections, failures, vmrss_kb,
# rss_anon_kb, rss_file_kb, rss_shmem_kb (from /proc/PID/status), then
# accepted, handshakes, handshake_errors, active (tlsfront stats). The
# session cache file lives on /dev/shm, so the pages of it that sessions
# touch show as RssShmem (bounded by cache.size), not as growth of RssAnon.
# At the end: the first, last and largest VmRSS and RssAnon, and the exit
# status is 1 if a connection failed or tlsfront died.
#
# Output: bench/results/soak-<date>.csv unless --csv is given.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=600 interval=10 threads=2 port=28460 workers=auto csv= build=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --secs) secs=$2; shift 2 ;;
        --interval) interval=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --csv) csv=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        *) echo "soak.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
mkdir -p bench/results
csv=${csv:-bench/results/soak-$(date +%Y%m%d-%H%M%S).csv}

if [[ $build == 1 ]]; then
    cargo build --release -p tlsfront --bin tlsfront -p tlsfront-tests --bin soak_client
fi
bin=target/release/tlsfront
client=target/release/soak_client
[[ -x $bin && -x $client ]] || { echo "soak.sh: build $bin and $client first" >&2; exit 2; }

dir=$(mktemp -d /tmp/tlsfront-soak.XXXXXX)
pid=
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$dir" "/dev/shm/tlsfront-soak-$port.cache" "/dev/shm/tlsfront-soak-$port.tickets"
}
trap cleanup EXIT

"$bin" run -o "net.listen=127.0.0.1:$port" -o "worker.count=$workers" \
    -o "control.socket=$dir/ctl.sock" \
    -o "cache.path=/dev/shm/tlsfront-soak-$port.cache" \
    -o "tickets.path=/dev/shm/tlsfront-soak-$port.tickets" \
    >"$dir/tlsfront.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
    grep -q '^tlsfront: ready$' "$dir/tlsfront.log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$dir/tlsfront.log" >&2; exit 1; }
    sleep 0.1
done
grep -q '^tlsfront: ready$' "$dir/tlsfront.log" || { echo "soak.sh: tlsfront not ready" >&2; exit 1; }
echo "soak: tlsfront pid $pid on 127.0.0.1:$port, $threads client threads, ${secs}s, sample every ${interval}s -> $csv"

status=0
TLSFRONT_BIN=$bin "$client" --addr "127.0.0.1:$port" --pid "$pid" --socket "$dir/ctl.sock" \
    --secs "$secs" --interval "$interval" --threads "$threads" --csv "$csv" || status=$?
kill -0 "$pid" 2>/dev/null || { echo "soak: tlsfront died" >&2; tail -20 "$dir/tlsfront.log" >&2; status=1; }

# first, last and largest VmRSS (col 4) and RssAnon (col 5), in kB
awk -F, 'NR == 2 { fr = $4; fa = $5 } NR > 1 { lr = $4; la = $5; if ($4 > mr) mr = $4; if ($5 > ma) ma = $5; n = $2 }
    END { printf "soak: %d connections; VmRSS first %d kB, last %d kB, max %d kB; RssAnon first %d kB, last %d kB, max %d kB\n", n, fr, lr, mr, fa, la, ma }' "$csv"
exit $status
