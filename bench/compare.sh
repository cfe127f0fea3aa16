#!/usr/bin/env bash
# tlsfront against the TLS terminators a user would pick instead: nginx 1.22
# (stream), HAProxy (mode tcp) and hitch, on this machine, the same work for
# all: TLS termination of loopback clients (tlsload) in front of one tiny
# upstream (`tlsload upstream --bulk`: reads the request, writes the
# response, waits for EOF; or a bulk transfer).
#
#   bench/compare.sh                  5 rounds x 5 s: the published table
#                                     (bench/results/compare.{md,json,svg})
#   bench/compare.sh --quick --draft  2 rounds x 2 s, everything once (3-5 min)
#
# options: --draft (write bench/results/compare-draft.* instead; needed for a
#          dirty tree, fewer than 5 rounds x 5 s, or a partial run)
#          --quick  --rounds N  --secs S  --modes LIST  --servers LIST
#          --phases LIST (load,plain,bulk,latency,perf,idle,survival)
#          --latency-modes LIST  --latency-rate R (else 70 % of the weakest)
#          --idle-connections N  --bulk-bytes N  --bulk-count N  --no-build
# environment: COMPARE_PORT_BASE (28440: 10 ports), COMPARE_REQUEST /
#   COMPARE_RESPONSE (100 / 200 bytes), COMPARE_CONCURRENCY (16),
#   COMPARE_NICE (e.g. -10, the same for every server), KEEP_TMP=1
#
# Every server gets the same ECDSA P-256 certificate, X25519 only, the
# AES-128-GCM suites (the client pins them too), the same upstream, one
# worker pinned to CPU 0 (tlsload and the upstream on CPU 1), and its best
# documented resumption setup: a shared session cache and tickets with a key
# that outlives a reload (a second listener with tickets off for the
# session-ID and stateful TLS 1.3 modes):
#   nginx     ssl_session_cache shared:SSL:64m, ssl_session_ticket_key file
#   HAProxy   tune.ssl.cachesize 200000 (its shared cache), tls-ticket-keys
#   hitch     as Debian builds it: without --enable-sessioncache, so no
#             shared cache (`session-cache` is refused): OpenSSL's cache in
#             the worker, tickets with OpenSSL's random key (hitch has no key
#             file and no way to turn tickets off: no stateful TLS 1.3 mode);
#             workers run as nobody (`user`), hitch refuses root workers
#   tlsfront  its shared cache file and ticket ring
#
# Phases (each measured round-robin, the server order shuffled per round):
#   load      handshakes/s and handshakes per server CPU-second (utime+stime
#             of all the server's processes, /proc) per mode: full12, full13,
#             resume-id12, resume-ticket12, resume13, resume13-cache; tlsload
#             checks every resumption (resumed fraction, must be 100 %)
#   plain     the plain TCP proxy floor: nginx stream without TLS
#   bulk      64 MiB down and up through the proxy, MB per server CPU-second
#   latency   p50/p99 handshake latency at a fixed offered load (tlsload
#             --rate) of 70 % of the weakest server's measured capacity
#   perf      syscalls per connection (perf raw_syscalls:sys_enter), and for
#             tlsfront io_uring_enter calls and io_uring requests per
#             connection (syscalls:sys_enter_io_uring_enter,
#             io_uring:io_uring_submit_req); said so when perf is missing
#   idle      10,000 idle TLS 1.3 connections (one request each) on a fresh
#             server: RssAnon growth per connection (all its processes), and
#             its wake-ups per second while they are idle
#   survival  does a session taken before a reload / a restart resume after
#             it (openssl s_client -sess_out / -sess_in); nginx both with
#             and without its ticket key file
#
# Every JSON records the git revision, whether the tree was clean, the load
# average before and after (and around each phase), the server order of
# every round and the servers' configurations. Without --draft the script
# refuses a dirty tree, fewer than 5 x 5 s, or a partial set of servers or
# phases. The machine should be quiet: the load average is in the output.
# Needs: nginx + libnginx-mod-stream, haproxy, hitch, linux-perf (all from
# scripts/setup.sh), openssl, taskset, python3 (standard library only).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/bench/results
ALL_MODES=full12,full13,resume-id12,resume-ticket12,resume13,resume13-cache
ALL_SERVERS=nginx,haproxy,hitch,tlsfront
ALL_PHASES=load,plain,bulk,latency,perf,idle,survival
ROUNDS=5
SECS=5
MODES=$ALL_MODES
SERVERS=$ALL_SERVERS
PHASES=$ALL_PHASES
LAT_MODES=full13,resume13
LAT_RATE=
PERF_MODES=full13,resume-ticket12,resume13
IDLE_CONNS=10000
IDLE_HOLD=5
BULK_BYTES=$((64 << 20))
BULK_COUNT=8
BUILD=1
DRAFT=0
QUICK=0
REQUEST=${COMPARE_REQUEST:-100}
RESPONSE=${COMPARE_RESPONSE:-200}
CONC=${COMPARE_CONCURRENCY:-16}
PORT_BASE=${COMPARE_PORT_BASE:-28440}
NICE=${COMPARE_NICE:-0}
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

while (($#)); do
    case $1 in
        --quick) QUICK=1 ROUNDS=2 SECS=2 IDLE_HOLD=3 BULK_COUNT=4 LAT_MODES=full13 ;;
        --draft) DRAFT=1 ;;
        --rounds) ROUNDS=$2; shift ;;
        --secs) SECS=$2; shift ;;
        --modes) MODES=$2; shift ;;
        --servers) SERVERS=$2; shift ;;
        --phases) PHASES=$2; shift ;;
        --latency-modes) LAT_MODES=$2; shift ;;
        --latency-rate) LAT_RATE=$2; shift ;;
        --idle-connections) IDLE_CONNS=$2; shift ;;
        --bulk-bytes) BULK_BYTES=$2; shift ;;
        --bulk-count) BULK_COUNT=$2; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare: unknown option $1 (--help)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf 'compare: %s\n' "$*" >&2; }
die() { printf 'compare: error: %s\n' "$*" >&2; exit 1; }
has() { [[ ,$1, == *,$2,* ]]; } # has LIST ITEM

for s in ${SERVERS//,/ }; do has "$ALL_SERVERS" "$s" || die "unknown server $s (from $ALL_SERVERS)"; done
for p in ${PHASES//,/ }; do has "$ALL_PHASES" "$p" || die "unknown phase $p (from $ALL_PHASES)"; done
for m in ${MODES//,/ } ${LAT_MODES//,/ }; do has "$ALL_MODES" "$m" || die "unknown mode $m (from $ALL_MODES)"; done

# --- what this run is: revision, clean tree, publish or draft ------------------
cd "$ROOT"
REVISION=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
REVISION_FULL=$(git rev-parse HEAD 2>/dev/null || echo unknown)
DIRTY_FILES=$(git status --porcelain 2>/dev/null || echo "?? (not a git tree)")
TREE_CLEAN=1
[[ -z $DIRTY_FILES ]] || TREE_CLEAN=0
NAME=compare
if ((DRAFT)); then
    NAME=compare-draft
else
    why=()
    ((TREE_CLEAN)) || why+=("the tree has uncommitted changes ($(wc -l <<<"$DIRTY_FILES") files)")
    ((ROUNDS >= 5)) || why+=("$ROUNDS rounds (a published table needs at least 5)")
    python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) >= 5 else 1)" "$SECS" ||
        why+=("$SECS s per run (a published table needs at least 5)")
    [[ $SERVERS == "$ALL_SERVERS" && $PHASES == "$ALL_PHASES" && $MODES == "$ALL_MODES" ]] ||
        why+=("a partial run (servers, phases or modes left out)")
    if ((${#why[@]})); then
        joined=$(printf '%s; ' "${why[@]}")
        die "refusing to publish bench/results/compare.*: ${joined%; }; use --draft (writes bench/results/compare-draft.*)"
    fi
fi

for tool in openssl taskset python3 ss shuf; do
    command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh)"
done
if has "$SERVERS" nginx || has "$PHASES" plain; then
    command -v nginx >/dev/null || die "nginx not found (run scripts/setup.sh)"
    [[ -f $STREAM_MODULE ]] || die "$STREAM_MODULE missing (libnginx-mod-stream; run scripts/setup.sh)"
fi
if has "$SERVERS" haproxy; then command -v haproxy >/dev/null || die "haproxy not found (run scripts/setup.sh)"; fi
if has "$SERVERS" hitch; then command -v hitch >/dev/null || die "hitch not found (run scripts/setup.sh)"; fi
PERF_STATUS=ok
if ! command -v perf >/dev/null; then
    PERF_STATUS="perf not found (scripts/setup.sh installs linux-perf): no syscall or io_uring counts"
elif ! perf stat -e syscalls:sys_enter_io_uring_enter,io_uring:io_uring_submit_req,raw_syscalls:sys_enter \
        -x, true >/dev/null 2>&1; then
    PERF_STATUS="perf cannot count the syscall/io_uring tracepoints here ($(perf stat -e io_uring:io_uring_submit_req true 2>&1 | head -1)): no syscall or io_uring counts"
fi
[[ $PERF_STATUS == ok ]] || say "$PERF_STATUS"
if ! command -v cargo >/dev/null && [[ -f ${CARGO_HOME:-$HOME/.cargo}/env ]]; then
    # shellcheck disable=SC1091
    . "${CARGO_HOME:-$HOME/.cargo}/env"
fi
NCPU=$(nproc)
((NCPU >= 2)) || die "needs 2 CPUs (server on CPU 0, client and upstream on CPU 1)"
# 10,000 idle connections are 10,000 client sockets, 10,000 upstream ones and
# 20,000 in the one server process. Raising the hard limit needs
# CAP_SYS_RESOURCE; without it the idle phase opens what the limit allows.
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)
MAXCONN=$(((FD_LIMIT - 400) / 2)) # per server: every connection is two descriptors
((MAXCONN <= 40000)) || MAXCONN=40000
IDLE_ASKED=$IDLE_CONNS
if ((IDLE_CONNS > MAXCONN - 200)); then
    IDLE_CONNS=$((MAXCONN - 200))
    IDLE_NOTE="$IDLE_CONNS idle connections, not $IDLE_ASKED: ulimit -n is $FD_LIMIT here (the hard limit; raising it needs CAP_SYS_RESOURCE) and a proxied connection is 2 descriptors"
    say "$IDLE_NOTE"
else
    IDLE_NOTE=
fi

# --- build -------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if ((BUILD)); then
    say "building tlsfront and tlsload (release)"
    cargo build --release --quiet -p tlsfront -p tlsfront-bench --bin tlsfront --bin tlsload
fi
TLSFRONT=$TARGET_DIR/release/tlsfront
TLSLOAD=$TARGET_DIR/release/tlsload
[[ -x $TLSFRONT && -x $TLSLOAD ]] || die "no release build in $TARGET_DIR/release (drop --no-build)"

# --- temp dir, cleanup ---------------------------------------------------------
TMP=$(mktemp -d /tmp/tlsfront-compare.XXXXXX)
mkdir -p "$TMP/bin" "$TMP/runs" "$TMP/bulk" "$TMP/lat" "$TMP/perf" "$TMP/idle" "$TMP/conf"
# Private copies: a rebuild in the shared target dir during the run must not
# change the binaries between rounds (or between a stop and a restart).
cp "$TLSFRONT" "$TLSLOAD" "$TMP/bin/"
TLSFRONT=$TMP/bin/tlsfront TLSLOAD=$TMP/bin/tlsload
BIN_SHA=$(sha256sum "$TLSFRONT" | cut -c1-16)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then say "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
LOADAVG_BEFORE=$(loadavg)
PHASE_LOG=$TMP/phases.tsv
: >"$PHASE_LOG"
phase_mark() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$(date -u +%H:%M:%S)" "$(loadavg)" >>"$PHASE_LOG"; }

# Ports.
UP_PORT=$PORT_BASE
NGX_T=$((PORT_BASE + 1)) NGX_N=$((PORT_BASE + 2)) NGX_P=$((PORT_BASE + 3))
HAP_T=$((PORT_BASE + 4)) HAP_N=$((PORT_BASE + 5))
HITCH_T=$((PORT_BASE + 6))
TF_T=$((PORT_BASE + 7)) TF_N=$((PORT_BASE + 8))
for p in $UP_PORT $NGX_T $NGX_N $NGX_P $HAP_T $HAP_N $HITCH_T $TF_T $TF_N; do
    if ss -Hltn "sport = :$p" | grep -q .; then die "port $p is in use (set COMPARE_PORT_BASE)"; fi
done
wait_port() { # port pid
    local i
    for ((i = 0; i < 200; i++)); do
        ss -Hltn "sport = :$1" | grep -q . && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# --- one certificate, ticket keys --------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 7 -subj /CN=localhost \
    -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
    -addext 'basicConstraints=critical,CA:FALSE' \
    -addext 'keyUsage=digitalSignature' -addext 'extendedKeyUsage=serverAuth' 2>/dev/null
cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/combined.pem" # HAProxy and hitch: one file
chmod 600 "$TMP/key.pem" "$TMP/combined.pem"
# nginx: one 80-byte key file (AES-256 ticket key + HMAC secret); HAProxy:
# TLS_TICKETS_NO (3) base64 keys of 80 bytes, the second-to-last encrypts.
openssl rand 80 >"$TMP/nginx.ticket.key"
for _ in 1 2 3; do openssl rand 80 | openssl base64 -A; echo; done >"$TMP/haproxy.ticket.keys"
chmod 600 "$TMP/nginx.ticket.key" "$TMP/haproxy.ticket.keys"
HITCH_USER=nobody
HITCH_GROUP=$(id -gn nobody 2>/dev/null || echo nogroup)

NICE_PREFIX=()
if [[ $NICE != 0 ]]; then NICE_PREFIX=(nice -n "$NICE"); fi
SERVER_PREFIX=("${NICE_PREFIX[@]}" taskset -c 0)
CLIENT_PREFIX=("${NICE_PREFIX[@]}" taskset -c 1)

# --- the servers: configuration, start, stop, processes ----------------------
descendants() { local p; for p in $(pgrep -P "$1"); do echo "$p"; descendants "$p"; done; }

NGX_DIR=$TMP/nginx
write_nginx_conf() { # keyfile: 1 = ssl_session_ticket_key, 0 = nginx's default (a random key per start)
    mkdir -p "$NGX_DIR/logs"
    cat >"$NGX_DIR/nginx.conf" <<EOF
load_module $STREAM_MODULE;
daemon off;
master_process on;
user root;
worker_processes 1;
worker_rlimit_nofile $FD_LIMIT;
pid $NGX_DIR/nginx.pid;
error_log $NGX_DIR/logs/error.log warn;
events { worker_connections $((2 * MAXCONN)); }
stream {
    ssl_certificate     $TMP/cert.pem;
    ssl_certificate_key $TMP/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
    ssl_ecdh_curve X25519;
    ssl_session_cache shared:SSL:64m;
    ssl_session_timeout 5m;
$( (($1)) && echo "    ssl_session_ticket_key $TMP/nginx.ticket.key;")
    proxy_connect_timeout 5s;
    server {
        listen 127.0.0.1:$NGX_T ssl reuseport backlog=4096;
        ssl_session_tickets on;
        proxy_pass 127.0.0.1:$UP_PORT;
    }
    server {
        listen 127.0.0.1:$NGX_N ssl reuseport backlog=4096;
        ssl_session_tickets off;
        proxy_pass 127.0.0.1:$UP_PORT;
    }
    server {
        listen 127.0.0.1:$NGX_P reuseport backlog=4096;
        proxy_pass 127.0.0.1:$UP_PORT;
    }
}
EOF
}
# Both nginx configurations, as run, for the JSON.
write_nginx_conf 0 && cp "$NGX_DIR/nginx.conf" "$TMP/conf/nginx-nokey.conf"
write_nginx_conf 1 && cp "$NGX_DIR/nginx.conf" "$TMP/conf/nginx.conf"
nginx_cmd() { nginx -p "$NGX_DIR" -c "$NGX_DIR/nginx.conf" -e "$NGX_DIR/logs/error.log" "$@"; }

HAP_CFG=$TMP/conf/haproxy.cfg
cat >"$HAP_CFG" <<EOF
global
    nbthread 1
    maxconn $MAXCONN
    tune.ssl.cachesize 200000
    tune.ssl.lifetime 300
    ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256
    ssl-default-bind-options ssl-min-ver TLSv1.2
    pidfile $TMP/haproxy.pid
defaults
    mode tcp
    maxconn $MAXCONN
    timeout connect 5s
    timeout client 10m
    timeout server 10m
frontend tls_tickets
    bind 127.0.0.1:$HAP_T ssl crt $TMP/combined.pem curves X25519 tls-ticket-keys $TMP/haproxy.ticket.keys backlog 4096
    default_backend upstream
frontend tls_no_tickets
    bind 127.0.0.1:$HAP_N ssl crt $TMP/combined.pem curves X25519 no-tls-tickets backlog 4096
    default_backend upstream
backend upstream
    server up 127.0.0.1:$UP_PORT
EOF

HITCH_CFG=$TMP/conf/hitch.conf
mkdir -p "$TMP/hitch-ocsp"
cat >"$HITCH_CFG" <<EOF
frontend = "[127.0.0.1]:$HITCH_T"
backend = "[127.0.0.1]:$UP_PORT"
pem-file = "$TMP/combined.pem"
workers = 1
backlog = 4096
user = "$HITCH_USER"
group = "$HITCH_GROUP"
tls-protos = TLSv1.2 TLSv1.3
ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
ciphersuites = "TLS_AES_128_GCM_SHA256"
ecdh-curve = "X25519"
ocsp-dir = "$TMP/hitch-ocsp"
daemon = off
log-level = 1
EOF

tf_args() { # name port
    local name=$1 port=$2
    local a=(-o "net.listen=127.0.0.1:$port" -o worker.count=1 -o worker.pin_cpus=1
        -o "tls.cert=$TMP/cert.pem" -o "tls.key=$TMP/key.pem"
        -o "upstream.addr=127.0.0.1:$UP_PORT" -o net.migrate_requests=0 -o worker.drain_timeout=1s
        -o net.backlog=4096
        -o "cache.path=$TMP/$name.cache" -o cache.size=64m -o cache.timeout=300s
        -o "tickets.path=$TMP/$name.tickets" -o "control.socket=$TMP/$name.sock" -o log.level=warn)
    if [[ $name == tf-n ]]; then a+=(-o tickets.enabled=0 -o tickets.tls13_mode=stateful); fi
    printf '%s\n' "${a[@]}"
}
{ echo "tlsfront run (tickets on)"; tf_args tf-t "$TF_T"; echo; echo "tlsfront run (tickets off, stateful TLS 1.3)"; tf_args tf-n "$TF_N"; } >"$TMP/conf/tlsfront.args"

declare -A TOP=() # server (or tf-t / tf-n) -> the top process
start_nginx() { # keyfile
    write_nginx_conf "$1"
    nginx_cmd -t -q || die "nginx -t failed: $(tail -3 "$NGX_DIR/logs/error.log")"
    "${SERVER_PREFIX[@]}" nginx -p "$NGX_DIR" -c "$NGX_DIR/nginx.conf" -e "$NGX_DIR/logs/error.log" \
        >>"$NGX_DIR/logs/stdout.log" 2>&1 &
    TOP[nginx]=$!
    PIDS+=("$!")
    wait_port "$NGX_T" "$!" && wait_port "$NGX_N" "$!" && wait_port "$NGX_P" "$!" ||
        die "nginx did not start: $(tail -5 "$NGX_DIR/logs/error.log")"
}
start_haproxy() {
    haproxy -c -q -f "$HAP_CFG" >"$TMP/haproxy.check" 2>&1 || die "haproxy -c failed: $(tail -5 "$TMP/haproxy.check")"
    # -W: master-worker (reload = SIGUSR2 to the master); -db: stay in the foreground.
    "${SERVER_PREFIX[@]}" haproxy -W -db -f "$HAP_CFG" >>"$TMP/haproxy.log" 2>&1 &
    TOP[haproxy]=$!
    PIDS+=("$!")
    wait_port "$HAP_T" "$!" && wait_port "$HAP_N" "$!" || die "haproxy did not start: $(tail -5 "$TMP/haproxy.log")"
}
start_hitch() {
    "${SERVER_PREFIX[@]}" hitch --config="$HITCH_CFG" >>"$TMP/hitch.log" 2>&1 &
    TOP[hitch]=$!
    PIDS+=("$!")
    wait_port "$HITCH_T" "$!" || die "hitch did not start: $(tail -5 "$TMP/hitch.log")"
}
start_tf() { # tf-t | tf-n
    local name=$1 port args i
    [[ $name == tf-t ]] && port=$TF_T || port=$TF_N
    mapfile -t args < <(tf_args "$name" "$port")
    : >"$TMP/$name.log"
    "${SERVER_PREFIX[@]}" "$TLSFRONT" run "${args[@]}" >>"$TMP/$name.log" 2>&1 &
    TOP[$name]=$!
    PIDS+=("$!")
    for ((i = 0; i < 200; i++)); do
        grep -q '^tlsfront: ready' "$TMP/$name.log" 2>/dev/null && [[ -S $TMP/$name.sock ]] && return 0
        kill -0 "${TOP[$name]}" 2>/dev/null || break
        sleep 0.05
    done
    die "tlsfront $name did not start: $(tail -5 "$TMP/$name.log")"
}
start_server() { # server [nginx keyfile]
    case $1 in
        nginx) start_nginx "${2:-1}" ;;
        haproxy) start_haproxy ;;
        hitch) start_hitch ;;
        tlsfront) start_tf tf-t; start_tf tf-n ;;
    esac
}
stop_top() { if [[ -n ${TOP[$1]:-} ]]; then stop_pid "${TOP[$1]}"; unset "TOP[$1]"; fi; }
stop_server() {
    case $1 in
        tlsfront) stop_top tf-t; stop_top tf-n ;;
        *) stop_top "$1" ;;
    esac
}
reload_server() {
    case $1 in
        nginx) nginx_cmd -s reload ;;
        haproxy) kill -USR2 "${TOP[haproxy]}" ;;
        hitch) kill -HUP "${TOP[hitch]}" ;;
        tlsfront)
            "$TLSFRONT" reload --socket "$TMP/tf-t.sock" >/dev/null
            "$TLSFRONT" reload --socket "$TMP/tf-n.sock" >/dev/null
            ;;
    esac
}
procs_of() { # top-level name (nginx, haproxy, hitch, tf-t, tf-n) -> its processes, one line
    # (call it as line=$(procs_of X): under set -e a dead server ends the run)
    local top=${TOP[$1]:-}
    [[ -n $top ]] || die "$1 is not running"
    kill -0 "$top" 2>/dev/null || die "$1 (pid $top) died; its log: $(tail -3 "$TMP"/*"$1"*.log 2>/dev/null)"
    # shellcheck disable=SC2046
    echo "$top" $(descendants "$top")
}
# Which listener serves a mode: T = tickets on, N = tickets off (session IDs,
# stateful TLS 1.3), P = plain TCP. Prints "port top-name", or nothing when the
# server cannot do the mode.
listener() { # server mode
    local kind=T
    case $2 in resume-id12 | resume13-cache) kind=N ;; plain) kind=P ;; esac
    case $1:$kind in
        nginx:T) echo "$NGX_T nginx" ;; nginx:N) echo "$NGX_N nginx" ;; nginx:P) echo "$NGX_P nginx" ;;
        haproxy:T) echo "$HAP_T haproxy" ;; haproxy:N) echo "$HAP_N haproxy" ;;
        # hitch cannot turn tickets off: session IDs work on its one listener
        # (tlsload's resume-id12 offers no ticket); stateful TLS 1.3 does not exist.
        hitch:T) echo "$HITCH_T hitch" ;; hitch:N) [[ $2 == resume-id12 ]] && echo "$HITCH_T hitch" ;;
        tlsfront:T) echo "$TF_T tf-t" ;; tlsfront:N) echo "$TF_N tf-n" ;;
    esac
}
load_mode() { case $1 in resume13-cache) echo resume13 ;; *) echo "$1" ;; esac; }
pid_args() { local p; for p in "$@"; do printf -- '--server-pid\n%s\n' "$p"; done; }

UP_PID=
start_upstream() {
    "${CLIENT_PREFIX[@]}" "$TLSLOAD" upstream --listen "127.0.0.1:$UP_PORT" --bulk \
        --request "$REQUEST" --response "$RESPONSE" --threads 256 >>"$TMP/upstream.log" 2>&1 &
    UP_PID=$!
    PIDS+=("$UP_PID")
    wait_port "$UP_PORT" "$UP_PID" || die "upstream did not start: $(cat "$TMP/upstream.log")"
}

run_tlsload() { # server mode json [extra tlsload args...]
    local server=$1 mode=$2 json=$3 l port top pids
    shift 3
    l=$(listener "$server" "$mode")
    [[ -n $l ]] || return 1
    read -r port top <<<"$l"
    local line pa
    # Callers test this function (no set -e inside): a dead server must still end the run.
    line=$(procs_of "$top") || die "$server stopped during the run"
    read -r -a pids <<<"$line"
    mapfile -t pa < <(pid_args "${pids[@]}")
    "${CLIENT_PREFIX[@]}" "$TLSLOAD" "$(load_mode "$mode")" --connect "127.0.0.1:$port" --insecure \
        --request "$REQUEST" --response "$RESPONSE" "${pa[@]}" --quiet --label "$server" --json "$json" "$@"
}
shuffled() { tr ',' '\n' <<<"$1" | shuf | tr '\n' ' '; }
ORDERS=$TMP/orders.tsv
: >"$ORDERS"

# --- machine -----------------------------------------------------------------
ver() { "$@" 2>&1 | head -1 || true; }
python3 - "$TMP/machine.json" <<EOF
import json, os, time
json.dump({
  "cpu_model": """$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)""",
  "cpus": $NCPU, "kernel": os.uname().release,
  "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
  "revision": "$REVISION", "revision_full": "$REVISION_FULL", "tree_clean": bool($TREE_CLEAN),
  "dirty_files": [l for l in """$DIRTY_FILES""".splitlines() if l],
  "tlsfront_sha256_16": "$BIN_SHA", "built_by_this_run": bool($BUILD),
  "loadavg_before": "$LOADAVG_BEFORE".split(),
  "versions": {
    "nginx": """$(ver nginx -v)""", "haproxy": """$(ver haproxy -v)""",
    "hitch": """$(ver hitch --version)""" + " (Debian's build: no --enable-sessioncache, so no shared session cache; tickets with OpenSSL's random key)",
    "openssl": """$(ver openssl version)""", "perf": """$(ver perf --version)""",
  },
  "perf_status": """$PERF_STATUS""",
  "rounds": $ROUNDS, "secs": float("$SECS"), "quick": bool($QUICK), "draft": bool($DRAFT),
  "servers": "$SERVERS".split(","), "phases": "$PHASES".split(","), "modes": "$MODES".split(","),
  "latency_modes": "$LAT_MODES".split(","), "perf_modes": "$PERF_MODES".split(","),
  "request_bytes": $REQUEST, "response_bytes": $RESPONSE, "concurrency": $CONC, "nice": $NICE,
  "idle_connections": $IDLE_CONNS, "idle_connections_asked": $IDLE_ASKED, "idle_note": """$IDLE_NOTE""", "fd_limit": $FD_LIMIT, "idle_hold_s": $IDLE_HOLD,
  "bulk_bytes": $BULK_BYTES, "bulk_count": $BULK_COUNT,
  "layout": "server pinned to CPU 0 with 1 worker; tlsload and the upstream on CPU 1",
}, open("$TMP/machine.json", "w"), indent=1)
EOF

read -r -a server_list <<<"${SERVERS//,/ }"
read -r -a mode_list <<<"${MODES//,/ }"
say "revision $REVISION ($( ((TREE_CLEAN)) && echo clean || echo 'uncommitted changes')), load average $LOADAVG_BEFORE$( ((DRAFT)) && echo ', draft')"
say "hitch: $(ver hitch --version), Debian's build (no shared session cache: built without --enable-sessioncache)"
start_upstream

# --- load (and plain) ------------------------------------------------------------
if has "$PHASES" load || has "$PHASES" plain || has "$PHASES" latency || has "$PHASES" perf || has "$PHASES" bulk; then
    for s in "${server_list[@]}"; do start_server "$s"; done
    has "$SERVERS" nginx || { has "$PHASES" plain && start_server nginx; }
    # Warm-up, not recorded: page in code, fill the first sessions.
    for s in "${server_list[@]}"; do
        run_tlsload "$s" full13 "$TMP/warmup.json" --duration 1 --concurrency "$CONC" >/dev/null
    done
fi
round_summary() { # files...
    python3 -c '
import json, sys
out = []
for f in sys.argv[1:]:
    x = json.load(open(f))
    r = x["resumed_fraction"]
    out.append("%s %.0f/s %.0f/cpu-s%s%s" % (x["label"], x["handshakes_per_s"], x["handshakes_per_server_cpu_s"] or 0,
        "" if r is None else " %.1f%%" % (100 * r), " ERR %d" % x["errors_total"] if x["errors_total"] else ""))
print("  ".join(out))' "$@"
}
load_round() { # mode round servers...
    local mode=$1 round=$2 s files=()
    shift 2
    printf 'load\t%s\t%s\t%s\n' "$mode" "$round" "$*" >>"$ORDERS"
    for s in "$@"; do
        local f=$TMP/runs/$mode.$s.$round.json
        if run_tlsload "$s" "$mode" "$f" --duration "$SECS" --concurrency "$CONC"; then files+=("$f"); fi
    done
    ((${#files[@]})) && say "  $mode round $round/$ROUNDS: $(round_summary "${files[@]}")"
    return 0
}
if has "$PHASES" load; then
    phase_mark load start
    say "load: ${#mode_list[@]} modes x $ROUNDS rounds x $SECS s, servers shuffled per round"
    for mode in "${mode_list[@]}"; do
        for ((round = 1; round <= ROUNDS; round++)); do
            # shellcheck disable=SC2046
            load_round "$mode" "$round" $(shuffled "$SERVERS")
        done
    done
    phase_mark load end
fi
if has "$PHASES" plain; then
    phase_mark plain start
    say "plain TCP proxy floor: nginx stream without TLS"
    for ((round = 1; round <= ROUNDS; round++)); do load_round plain "$round" nginx; done
    phase_mark plain end
fi

# --- bulk ----------------------------------------------------------------------
if has "$PHASES" bulk; then
    phase_mark bulk start
    say "bulk: $BULK_COUNT x $((BULK_BYTES >> 20)) MiB down and up per server and round"
    for ((round = 1; round <= ROUNDS; round++)); do
        order=$(shuffled "$SERVERS")
        printf 'bulk\t-\t%s\t%s\n' "$round" "$order" >>"$ORDERS"
        for s in $order; do
            read -r port top <<<"$(listener "$s" full13)"
            line=$(procs_of "$top")
            read -r -a pids <<<"$line"
            mapfile -t pa < <(pid_args "${pids[@]}")
            "${CLIENT_PREFIX[@]}" "$TLSLOAD" bulk --connect "127.0.0.1:$port" --bytes "$BULK_BYTES" \
                --count "$BULK_COUNT" --direction down,up "${pa[@]}" --label "$s" \
                --json "$TMP/bulk/$s.$round.json" | sed "s/^/compare:   $s: /" >&2
        done
    done
    phase_mark bulk end
fi

# --- latency at a fixed offered load ---------------------------------------------
capacity() { # mode -> the weakest server's median handshakes/s in the load phase
    python3 - "$TMP/runs" "$1" <<'EOF'
import glob, json, os, statistics, sys
d, mode = sys.argv[1:]
by = {}
for f in glob.glob(os.path.join(d, mode + ".*.json")):
    x = json.load(open(f))
    by.setdefault(x["label"], []).append(x["handshakes_per_s"])
print("%.0f %s" % min((statistics.median(v), k) for k, v in by.items()) if by else "")
EOF
}
if has "$PHASES" latency; then
    phase_mark latency start
    for mode in ${LAT_MODES//,/ }; do
        if [[ -n $LAT_RATE ]]; then
            rate=$LAT_RATE weakest="given (--latency-rate)"
        else
            read -r cap weakest <<<"$(capacity "$mode")"
            [[ -n ${cap:-} ]] || die "latency $mode: no capacity measured (run the load phase, or give --latency-rate)"
            rate=$(python3 -c "print(round(0.7 * $cap))")
        fi
        printf '%s\t%s\t%s\n' "$mode" "$rate" "$weakest" >>"$TMP/lat/rates.tsv"
        say "latency $mode: offered $rate handshakes/s (70 % of $weakest's ${cap:-?}/s)"
        for ((round = 1; round <= ROUNDS; round++)); do
            order=$(shuffled "$SERVERS")
            printf 'latency\t%s\t%s\t%s\n' "$mode" "$round" "$order" >>"$ORDERS"
            for s in $order; do
                # 128 loops: enough free ones that a start is rarely late
                # (the JSON counts late starts).
                run_tlsload "$s" "$mode" "$TMP/lat/$mode.$s.$round.json" --duration "$SECS" \
                    --rate "$rate" --concurrency 128 || true
            done
        done
    done
    phase_mark latency end
fi

# --- perf: syscalls and io_uring per connection ------------------------------------
if has "$PHASES" perf; then
    phase_mark perf start
    if [[ $PERF_STATUS != ok ]]; then
        say "perf: skipped: $PERF_STATUS"
    else
        say "perf: syscalls (and tlsfront's io_uring_enter / io_uring requests) per connection"
        for mode in ${PERF_MODES//,/ }; do
            for s in $(shuffled "$SERVERS"); do
                l=$(listener "$s" "$mode")
                [[ -n $l ]] || continue
                read -r port top <<<"$l"
                events=raw_syscalls:sys_enter
                [[ $s == tlsfront ]] && events+=,syscalls:sys_enter_io_uring_enter,io_uring:io_uring_submit_req
                pidlist=$(procs_of "$top")
                pidlist=${pidlist// /,}
                perf stat -x, -e "$events" -p "$pidlist" -o "$TMP/perf/$mode.$s.csv" 2>"$TMP/perf/$mode.$s.err" &
                perf_pid=$!
                PIDS+=("$perf_pid")
                sleep 0.5 # perf attaches to every thread before the load starts
                run_tlsload "$s" "$mode" "$TMP/perf/$mode.$s.json" --duration "$SECS" --concurrency "$CONC" || true
                kill -INT "$perf_pid" 2>/dev/null || true
                wait "$perf_pid" 2>/dev/null || true
                forget_pid "$perf_pid"
            done
        done
    fi
    phase_mark perf end
fi
for s in "${server_list[@]}"; do stop_server "$s"; done
stop_server nginx

# --- idle connections, each server fresh -------------------------------------------
if has "$PHASES" idle; then
    phase_mark idle start
    say "idle: $IDLE_CONNS TLS 1.3 connections per server (fresh start), held ${IDLE_HOLD} s"
    order=$(shuffled "$SERVERS")
    printf 'idle\t-\t1\t%s\n' "$order" >>"$ORDERS"
    for s in $order; do
        case $s in tlsfront) start_tf tf-t ;; *) start_server "$s" ;; esac
        # A short warm-up: code paged in, allocator pools made, as on a
        # server that has run a while; then the baseline.
        run_tlsload "$s" full13 "$TMP/warmup.json" --duration 1 --concurrency "$CONC" >/dev/null
        read -r port top <<<"$(listener "$s" full13)"
        line=$(procs_of "$top")
        read -r -a pids <<<"$line"
        mapfile -t pa < <(pid_args "${pids[@]}")
        "${CLIENT_PREFIX[@]}" "$TLSLOAD" idle --connect "127.0.0.1:$port" --connections "$IDLE_CONNS" \
            --hold "$IDLE_HOLD" --settle 5 --threads 8 --request "$REQUEST" --response "$RESPONSE" "${pa[@]}" \
            --label "$s" --json "$TMP/idle/$s.json" | sed "s/^/compare:   $s: /" >&2 ||
            say "  $s: idle run failed"
        stop_server "$s"
        sleep 1 # the upstream's parked sockets see their EOF
    done
    phase_mark idle end
fi

# --- resumption survival -----------------------------------------------------
s_client() { # port sessflag file extra...
    local port=$1 flag=$2 file=$3
    shift 3
    (sleep 0.3) | timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername localhost \
        "$flag" "$file" "$@" 2>&1 || true
}
MECHS=(id12 ticket12 tls13 tls13cache)
mech_mode() { case $1 in id12) echo resume-id12 ;; ticket12) echo resume-ticket12 ;; tls13) echo resume13 ;; tls13cache) echo resume13-cache ;; esac; }
mech_flags() { case $1 in id12) echo "-tls1_2 -no_ticket" ;; ticket12) echo "-tls1_2" ;; *) echo "-tls1_3" ;; esac; }
mech_port() { local l; l=$(listener "$1" "$(mech_mode "$2")"); echo "${l%% *}"; }
get_session() { # server mech file
    local port out
    port=$(mech_port "$1" "$2")
    [[ -n $port ]] || return 0
    # shellcheck disable=SC2046
    out=$(s_client "$port" -sess_out "$3" $(mech_flags "$2"))
    grep -q '^New,' <<<"$out" || : >"$3"
}
try_resume() { # server mech file -> yes / no / n/a / no-session / error
    local port out
    port=$(mech_port "$1" "$2")
    [[ -n $port ]] || { echo "n/a"; return; }
    [[ -s $3 ]] || { echo "no-session"; return; }
    # shellcheck disable=SC2046
    out=$(s_client "$port" -sess_in "$3" $(mech_flags "$2"))
    if grep -q '^Reused,' <<<"$out"; then echo yes
    elif grep -q '^New,' <<<"$out"; then echo no
    else echo error; fi
}
if has "$PHASES" survival; then
    phase_mark survival start
    SURV=$TMP/survival.tsv
    : >"$SURV"
    variants=()
    for s in "${server_list[@]}"; do
        if [[ $s == nginx ]]; then variants+=(nginx nginx-nokey); else variants+=("$s"); fi
    done
    say "resumption survival (reload, restart): ${variants[*]}"
    for v in "${variants[@]}"; do
        s=${v%-nokey}
        key=1
        [[ $v == nginx-nokey ]] && key=0
        rm -f "$TMP"/tf-*.cache "$TMP"/tf-*.tickets # fresh state for each server
        start_server "$s" "$key"
        for m in "${MECHS[@]}"; do
            for phase in base reload restart; do get_session "$s" "$m" "$TMP/sess.$v.$m.$phase"; done
            printf '%s\t%s\tbaseline\t%s\n' "$v" "$m" "$(try_resume "$s" "$m" "$TMP/sess.$v.$m.base")" >>"$SURV"
        done
        reload_server "$s"
        sleep 2 # the new workers take over
        for m in "${MECHS[@]}"; do
            printf '%s\t%s\treload\t%s\n' "$v" "$m" "$(try_resume "$s" "$m" "$TMP/sess.$v.$m.reload")" >>"$SURV"
        done
        stop_server "$s"
        start_server "$s" "$key"
        for m in "${MECHS[@]}"; do
            printf '%s\t%s\trestart\t%s\n' "$v" "$m" "$(try_resume "$s" "$m" "$TMP/sess.$v.$m.restart")" >>"$SURV"
        done
        stop_server "$s"
    done
    phase_mark survival end
fi
stop_pid "$UP_PID"
if grep -q '\[\(crit\|alert\|emerg\)\]' "$NGX_DIR/logs/error.log" 2>/dev/null; then
    say "nginx error log has critical lines:"; grep '\[\(crit\|alert\|emerg\)\]' "$NGX_DIR/logs/error.log" | tail -3 >&2
fi
echo "$LOADAVG_BEFORE" >"$TMP/loadavg_before"

# --- report ----------------------------------------------------------------------
python3 "$ROOT/bench/compare_report.py" "$TMP" "$OUT" "$NAME"
