#!/usr/bin/env bash
# tlsfront vs nginx on this machine, same work for both: TLS termination of
# loopback clients (tlsload) and a TCP proxy to one tiny upstream
# (`tlsload upstream`: reads the request, writes the response, waits for EOF).
#
#   bench/compare-nginx.sh            5 rounds x 5 s per mode, server and layout
#   bench/compare-nginx.sh --quick    2 rounds x 2 s (about 3 minutes in all)
#
# options: --rounds N  --secs S  --layouts a,b  --modes LIST  --no-build
#          --no-survival  --no-load
# environment: COMPARE_NICE (e.g. -10), COMPARE_PORT_BASE (28440: 5 ports),
#   COMPARE_REQUEST / COMPARE_RESPONSE (100 / 200 bytes),
#   COMPARE_CONCURRENCY_A/_B, COMPARE_THREADS_A/_B (tlsload loops), KEEP_TMP=1
#
# Both servers get ONE ECDSA P-256 certificate, X25519 and AES-128-GCM (the
# client pins them), a 64 MiB shared session cache, session tickets on (and a
# second listener with tickets off for the session-ID and the stateful TLS 1.3
# modes), and the same number of workers. For every mode the two servers are
# measured alternately (nginx, tlsfront, nginx, tlsfront, ...). Layouts:
#   a  server on CPU 0 (1 worker), tlsload and the upstream on CPU 1:
#      per-core figures
#   b  server on both CPUs (2 workers), tlsload and the upstream unpinned:
#      load generator and server share the cores, read the ratios, not the
#      absolute numbers
# Then the resumption-survival matrix (openssl s_client -sess_out/-sess_in):
# does a session resume after a reload, after a full restart?
#
# Output: a table on stdout and in bench/results/compare.md, all runs in
# bench/results/compare.json, the plot bench/results/compare.svg.
# Needs: nginx + libnginx-mod-stream (scripts/setup.sh), openssl, taskset,
# python3 (standard library only). Everything else lives in a temp dir.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/bench/results
ROUNDS=5
SECS=5
LAYOUTS=a,b
MODES=full12,full13,resume-id12,resume-ticket12,resume13,resume13-cache
BUILD=1
SURVIVAL=1
LOAD=1
QUICK=0
REQUEST=${COMPARE_REQUEST:-100}
RESPONSE=${COMPARE_RESPONSE:-200}
PORT_BASE=${COMPARE_PORT_BASE:-28440}
# COMPARE_NICE=-10: run servers, upstream and tlsload at that niceness (same
# for both servers), so that other work on a shared machine disturbs less.
NICE=${COMPARE_NICE:-0}
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

while (($#)); do
    case $1 in
        --quick) QUICK=1 ROUNDS=2 SECS=2 ;;
        --rounds) ROUNDS=$2; shift ;;
        --secs) SECS=$2; shift ;;
        --layouts) LAYOUTS=$2; shift ;;
        --modes) MODES=$2; shift ;;
        --no-build) BUILD=0 ;;
        --no-survival) SURVIVAL=0 ;;
        --no-load) LOAD=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare-nginx: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

say() { printf 'compare: %s\n' "$*" >&2; }
die() { printf 'compare: error: %s\n' "$*" >&2; exit 1; }

for tool in nginx openssl taskset python3 ss; do
    command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh)"
done
[[ -f $STREAM_MODULE ]] || die "$STREAM_MODULE missing (libnginx-mod-stream; run scripts/setup.sh)"
if ! command -v cargo >/dev/null && [[ -f ${CARGO_HOME:-$HOME/.cargo}/env ]]; then
    # shellcheck disable=SC1091
    . "${CARGO_HOME:-$HOME/.cargo}/env"
fi
NCPU=$(nproc)

# --- build -------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if ((BUILD)); then
    say "building tlsfront and tlsload (release)"
    (cd "$ROOT" && cargo build --release --quiet -p tlsfront -p tlsfront-bench --bin tlsfront --bin tlsload)
fi
TLSFRONT=$TARGET_DIR/release/tlsfront
TLSLOAD=$TARGET_DIR/release/tlsload
[[ -x $TLSFRONT && -x $TLSLOAD ]] || die "no release build in $TARGET_DIR/release (drop --no-build)"

# --- temp dir, cleanup ---------------------------------------------------------
TMP=$(mktemp -d /tmp/tlsfront-compare.XXXXXX)
# Private copies: a rebuild in the shared target dir during the run must not
# change the binaries between rounds (or between a stop and a restart).
mkdir -p "$TMP/bin"
cp "$TLSFRONT" "$TLSLOAD" "$TMP/bin/"
TLSFRONT=$TMP/bin/tlsfront TLSLOAD=$TMP/bin/tlsload
REVISION=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(cd "$ROOT" && git status --porcelain -- frontend bench 2>/dev/null) ]]; then
    REVISION+=" (with uncommitted changes)"
fi
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then say "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
forget_pid() { # removes $1 from PIDS
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}
mkdir -p "$OUT" "$TMP/runs"

# Ports: tlsfront and nginx, each with tickets on (T) and off (N), and the upstream.
UP_PORT=$PORT_BASE
NGX_T=$((PORT_BASE + 1)) NGX_N=$((PORT_BASE + 2))
TF_T=$((PORT_BASE + 3)) TF_N=$((PORT_BASE + 4))
for p in $UP_PORT $NGX_T $NGX_N $TF_T $TF_N; do
    if ss -Hltn "sport = :$p" | grep -q .; then
        die "port $p is in use (set COMPARE_PORT_BASE)"
    fi
done

wait_port() { # port pid
    local i
    for ((i = 0; i < 100; i++)); do
        ss -Hltn "sport = :$1" | grep -q . && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# --- one certificate for both ------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 7 -subj /CN=localhost \
    -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
    -addext 'basicConstraints=critical,CA:FALSE' \
    -addext 'keyUsage=digitalSignature' -addext 'extendedKeyUsage=serverAuth' 2>/dev/null
chmod 600 "$TMP/key.pem"

# --- the servers -------------------------------------------------------------
# $1 = workers, $2 = "pinned" (layout a: everything on CPU 0) or "" (layout b)
NGX_DIR=$TMP/nginx
NGX_PID=
write_nginx_conf() {
    local workers=$1 affinity=$2
    mkdir -p "$NGX_DIR/logs"
    cat >"$NGX_DIR/nginx.conf" <<EOF
load_module $STREAM_MODULE;
daemon off;
master_process on;
user root;
worker_processes $workers;
${affinity:+worker_cpu_affinity $affinity;}
pid $NGX_DIR/nginx.pid;
error_log $NGX_DIR/logs/error.log warn;
events { worker_connections 8192; }
stream {
    ssl_certificate     $TMP/cert.pem;
    ssl_certificate_key $TMP/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256;
    ssl_ecdh_curve X25519;
    ssl_session_cache shared:SSL:64m;
    ssl_session_timeout 5m;
    proxy_connect_timeout 5s;
    server {
        listen 127.0.0.1:$NGX_T ssl reuseport;
        ssl_session_tickets on;
        proxy_pass 127.0.0.1:$UP_PORT;
    }
    server {
        listen 127.0.0.1:$NGX_N ssl reuseport;
        ssl_session_tickets off;
        proxy_pass 127.0.0.1:$UP_PORT;
    }
}
EOF
}
nginx_cmd() { nginx -p "$NGX_DIR" -c "$NGX_DIR/nginx.conf" -e "$NGX_DIR/logs/error.log" "$@"; }
start_nginx() { # prefix words (taskset ...) in SERVER_PREFIX
    nginx_cmd -t -q || die "nginx -t failed: $(cat "$NGX_DIR/logs/error.log")"
    "${SERVER_PREFIX[@]}" nginx -p "$NGX_DIR" -c "$NGX_DIR/nginx.conf" -e "$NGX_DIR/logs/error.log" \
        >>"$NGX_DIR/logs/stdout.log" 2>&1 &
    NGX_PID=$!
    PIDS+=("$NGX_PID")
    wait_port "$NGX_T" "$NGX_PID" && wait_port "$NGX_N" "$NGX_PID" ||
        die "nginx did not start: $(tail -5 "$NGX_DIR/logs/error.log")"
}
nginx_pids() { # master and workers, one line
    local workers
    workers=$(pgrep -P "$NGX_PID" | tr '\n' ' ')
    echo "$NGX_PID $workers"
}

TF_T_PID= TF_N_PID=
tf_args() { # name port workers pin -> tlsfront arguments
    local name=$1 port=$2 workers=$3 pin=$4
    local a=(-o "net.listen=127.0.0.1:$port" -o "worker.count=$workers" -o "worker.pin_cpus=$pin"
        -o "tls.cert=$TMP/cert.pem" -o "tls.key=$TMP/key.pem"
        -o "upstream.addr=127.0.0.1:$UP_PORT" -o net.migrate_requests=0 -o worker.drain_secs=1s
        -o "cache.path=$TMP/$name.cache" -o cache.size=64m -o cache.timeout_secs=300s
        -o "tickets.path=$TMP/$name.tickets" -o "control.socket=$TMP/$name.sock" -o log.level=warn)
    if [[ $name == tf-n ]]; then
        a+=(-o tickets.enabled=0 -o tickets.tls13_mode=stateful)
    fi
    printf '%s\n' "${a[@]}"
}
start_tlsfront() { # name port workers pin -> sets TF_STARTED_PID
    local name=$1 port=$2 args
    mapfile -t args < <(tf_args "$@")
    "${SERVER_PREFIX[@]}" "$TLSFRONT" run "${args[@]}" >>"$TMP/$name.log" 2>&1 &
    TF_STARTED_PID=$!
    PIDS+=("$TF_STARTED_PID")
    local i
    for ((i = 0; i < 200; i++)); do
        grep -q '^tlsfront: ready' "$TMP/$name.log" 2>/dev/null && [[ -S $TMP/$name.sock ]] && return 0
        kill -0 "$TF_STARTED_PID" 2>/dev/null || break
        sleep 0.05
    done
    die "tlsfront $name did not start: $(tail -5 "$TMP/$name.log")"
}
start_servers() { # workers pin
    : >"$TMP/tf-t.log"
    : >"$TMP/tf-n.log"
    start_nginx
    start_tlsfront tf-t "$TF_T" "$1" "$2"
    TF_T_PID=$TF_STARTED_PID
    start_tlsfront tf-n "$TF_N" "$1" "$2"
    TF_N_PID=$TF_STARTED_PID
}
stop_servers() {
    [[ -n $NGX_PID ]] && stop_pid "$NGX_PID"
    [[ -n $TF_T_PID ]] && stop_pid "$TF_T_PID"
    [[ -n $TF_N_PID ]] && stop_pid "$TF_N_PID"
    NGX_PID= TF_T_PID= TF_N_PID=
}

UP_PID=
start_upstream() {
    "${CLIENT_PREFIX[@]}" "$TLSLOAD" upstream --listen "127.0.0.1:$UP_PORT" \
        --request "$REQUEST" --response "$RESPONSE" --threads 256 >>"$TMP/upstream.log" 2>&1 &
    UP_PID=$!
    PIDS+=("$UP_PID")
    wait_port "$UP_PORT" "$UP_PID" || die "upstream did not start: $(cat "$TMP/upstream.log")"
}

# mode -> tlsload mode and which listener (T: tickets on, N: tickets off)
load_mode() { case $1 in resume13-cache) echo resume13 ;; *) echo "$1" ;; esac; }
listener() { case $1 in resume-id12 | resume13-cache) echo N ;; *) echo T ;; esac; }

run_load() { # layout mode server round
    local layout=$1 mode=$2 server=$3 round=$4 port pids
    if [[ $server == nginx ]]; then
        [[ $(listener "$mode") == T ]] && port=$NGX_T || port=$NGX_N
        pids=$(nginx_pids)
    else
        if [[ $(listener "$mode") == T ]]; then port=$TF_T pids=$TF_T_PID; else port=$TF_N pids=$TF_N_PID; fi
    fi
    local pid_args=() p
    for p in $pids; do pid_args+=(--server-pid "$p"); done
    "${CLIENT_PREFIX[@]}" "$TLSLOAD" "$(load_mode "$mode")" --connect "127.0.0.1:$port" --insecure \
        --threads "$LOAD_THREADS" --concurrency "$LOAD_CONC" --duration "$SECS" \
        --request "$REQUEST" --response "$RESPONSE" "${pid_args[@]}" --quiet \
        --label "$server" --json "$TMP/runs/$layout.$mode.$server.$round.json"
}

# --- machine -----------------------------------------------------------------
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
python3 - "$TMP/machine.json" "$cpu_model" "$NCPU" "$ROUNDS" "$SECS" "$REQUEST" "$RESPONSE" "$QUICK" "$REVISION" "$NICE" <<'EOF'
import json, os, sys, subprocess, time
out, model, ncpu, rounds, secs, req, resp, quick, rev, nice = sys.argv[1:]
def cmd(*a):
    try: return subprocess.run(a, capture_output=True, text=True).stdout.strip() or subprocess.run(a, capture_output=True, text=True).stderr.strip()
    except Exception as e: return str(e)
json.dump({"cpu_model": model, "cpus": int(ncpu), "kernel": os.uname().release,
           "loadavg_before": open("/proc/loadavg").read().split()[:3],
           "nginx": cmd("nginx", "-v"), "openssl": cmd("openssl", "version"),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "rounds": int(rounds), "secs": float(secs), "request_bytes": int(req),
           "response_bytes": int(resp), "quick": quick == "1", "revision": rev, "nice": int(nice)}, open(out, "w"))
EOF

# --- load runs ---------------------------------------------------------------
NICE_PREFIX=()
if [[ $NICE != 0 ]]; then NICE_PREFIX=(nice -n "$NICE"); fi
IFS=, read -r -a layout_list <<<"$LAYOUTS"
IFS=, read -r -a mode_list <<<"$MODES"
if ((LOAD)); then
    for layout in "${layout_list[@]}"; do
        case $layout in
            a)
                ((NCPU >= 2)) || die "layout a needs 2 CPUs"
                SERVER_PREFIX=("${NICE_PREFIX[@]}" taskset -c 0) CLIENT_PREFIX=("${NICE_PREFIX[@]}" taskset -c 1)
                WORKERS=1 PIN=0 AFFINITY=
                LOAD_THREADS=${COMPARE_THREADS_A:-1} LOAD_CONC=${COMPARE_CONCURRENCY_A:-16}
                say "layout a: server on CPU 0 (1 worker), tlsload + upstream on CPU 1"
                ;;
            b)
                SERVER_PREFIX=("${NICE_PREFIX[@]}") CLIENT_PREFIX=("${NICE_PREFIX[@]}")
                WORKERS=$NCPU PIN=1 AFFINITY=auto
                LOAD_THREADS=${COMPARE_THREADS_B:-2} LOAD_CONC=${COMPARE_CONCURRENCY_B:-16}
                say "layout b: server on all $NCPU CPUs ($NCPU workers), tlsload + upstream unpinned on the same CPUs"
                say "  caveat: client, upstream and server compete for the same cores; compare ratios, not absolute numbers"
                ;;
            *) die "unknown layout $layout (a or b)" ;;
        esac
        write_nginx_conf "$WORKERS" "$AFFINITY"
        start_upstream
        start_servers "$WORKERS" "$PIN"
        # Warm-up, not recorded: page in code, fill the first sessions.
        for server in nginx tlsfront; do
            SECS_SAVED=$SECS SECS=1
            run_load "$layout" full13 "$server" warmup >/dev/null
            SECS=$SECS_SAVED
            rm -f "$TMP/runs/$layout.full13.$server.warmup.json"
        done
        for mode in "${mode_list[@]}"; do
            for ((round = 1; round <= ROUNDS; round++)); do
                for server in nginx tlsfront; do
                    run_load "$layout" "$mode" "$server" "$round"
                done
                say "  $layout $mode round $round/$ROUNDS: $(python3 -c '
import json,sys
r=[json.load(open(f)) for f in sys.argv[1:]]
print("  ".join("%s %.0f/s %s%%" % (x["label"], x["handshakes_per_s"], "-" if x["resumed_fraction"] is None else "%.1f" % (100*x["resumed_fraction"])) for x in r))
' "$TMP/runs/$layout.$mode.nginx.$round.json" "$TMP/runs/$layout.$mode.tlsfront.$round.json")"
            done
        done
        "$TLSFRONT" stats --socket "$TMP/tf-t.sock" --json >"$TMP/runs/$layout.tlsfront-stats-t.json" 2>/dev/null || true
        "$TLSFRONT" stats --socket "$TMP/tf-n.sock" --json >"$TMP/runs/$layout.tlsfront-stats-n.json" 2>/dev/null || true
        stop_servers
        stop_pid "$UP_PID"
        UP_PID=
        if grep -q '\[\(crit\|alert\|emerg\)\]' "$NGX_DIR/logs/error.log" 2>/dev/null; then
            say "nginx error log has critical lines:"; grep '\[\(crit\|alert\|emerg\)\]' "$NGX_DIR/logs/error.log" | tail -3 >&2
        fi
    done
fi

# --- resumption survival -----------------------------------------------------
# For each mechanism: a session taken before the event, resumed after it.
s_client() { # port sessflag file extra...
    local port=$1 flag=$2 file=$3
    shift 3
    (sleep 0.3) | timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername localhost \
        "$flag" "$file" "$@" 2>&1 || true
}
mech_port() { # mechanism server
    case $1:$2 in
        id12:nginx) echo "$NGX_N" ;; id12:tlsfront) echo "$TF_N" ;;
        tls13cache:nginx) echo "$NGX_N" ;; tls13cache:tlsfront) echo "$TF_N" ;;
        *:nginx) echo "$NGX_T" ;; *:tlsfront) echo "$TF_T" ;;
    esac
}
mech_flags() {
    case $1 in
        id12) echo "-tls1_2 -no_ticket" ;; ticket12) echo "-tls1_2" ;;
        tls13 | tls13cache) echo "-tls1_3" ;;
    esac
}
MECHS=(id12 ticket12 tls13 tls13cache)
get_session() { # mech server file -> "new" or what went wrong
    local out
    # shellcheck disable=SC2046
    out=$(s_client "$(mech_port "$1" "$2")" -sess_out "$3" $(mech_flags "$1"))
    if grep -q '^New,' <<<"$out" && [[ -s $3 ]]; then echo ok; else echo "no-session"; fi
}
try_resume() { # mech server file -> yes/no
    local out
    [[ -s $3 ]] || { echo "no-session"; return; }
    # shellcheck disable=SC2046
    out=$(s_client "$(mech_port "$1" "$2")" -sess_in "$3" $(mech_flags "$1"))
    if grep -q '^Reused,' <<<"$out"; then echo yes
    elif grep -q '^New,' <<<"$out"; then echo no
    else echo "error"; fi
}
if ((SURVIVAL)); then
    say "resumption survival (reload, restart), both servers with $NCPU workers"
    SERVER_PREFIX=() CLIENT_PREFIX=()
    write_nginx_conf "$NCPU" auto
    start_upstream
    SURV=$TMP/survival.tsv
    : >"$SURV"
    for server in nginx tlsfront; do
        # fresh state for each server
        rm -f "$TMP"/tf-*.cache "$TMP"/tf-*.tickets
        if [[ $server == nginx ]]; then start_nginx; else
            start_tlsfront tf-t "$TF_T" "$NCPU" 1; TF_T_PID=$TF_STARTED_PID
            start_tlsfront tf-n "$TF_N" "$NCPU" 1; TF_N_PID=$TF_STARTED_PID
        fi
        for m in "${MECHS[@]}"; do
            for phase in base reload restart; do
                get_session "$m" "$server" "$TMP/sess.$server.$m.$phase" >/dev/null
            done
            printf '%s\t%s\tbaseline\t%s\n' "$server" "$m" "$(try_resume "$m" "$server" "$TMP/sess.$server.$m.base")" >>"$SURV"
        done
        # reload
        if [[ $server == nginx ]]; then
            nginx_cmd -s reload
        else
            "$TLSFRONT" reload --socket "$TMP/tf-t.sock" >/dev/null
            "$TLSFRONT" reload --socket "$TMP/tf-n.sock" >/dev/null
        fi
        sleep 1.5
        for m in "${MECHS[@]}"; do
            printf '%s\t%s\treload\t%s\n' "$server" "$m" "$(try_resume "$m" "$server" "$TMP/sess.$server.$m.reload")" >>"$SURV"
        done
        # full restart (tlsfront: same cache and ticket files)
        if [[ $server == nginx ]]; then
            stop_pid "$NGX_PID"; NGX_PID=
            start_nginx
        else
            stop_pid "$TF_T_PID"; stop_pid "$TF_N_PID"
            start_tlsfront tf-t "$TF_T" "$NCPU" 1; TF_T_PID=$TF_STARTED_PID
            start_tlsfront tf-n "$TF_N" "$NCPU" 1; TF_N_PID=$TF_STARTED_PID
        fi
        for m in "${MECHS[@]}"; do
            printf '%s\t%s\trestart\t%s\n' "$server" "$m" "$(try_resume "$m" "$server" "$TMP/sess.$server.$m.restart")" >>"$SURV"
        done
        stop_servers
    done
    stop_pid "$UP_PID"
    cp "$SURV" "$TMP/survival.tsv.keep"
fi

# --- report: table, JSON, SVG --------------------------------------------------
python3 - "$TMP" "$OUT" "$LOAD" "$SURVIVAL" "$LAYOUTS" "$MODES" <<'EOF'
import glob, json, os, statistics, sys
tmp, out, load, survival, layouts, modes = sys.argv[1:]
layouts = layouts.split(","); modes = modes.split(",")
machine = json.load(open(os.path.join(tmp, "machine.json")))
machine["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
runs = []
for f in sorted(glob.glob(os.path.join(tmp, "runs", "*.json"))):
    parts = os.path.basename(f).split(".")
    if len(parts) != 5:
        continue
    layout, mode, server, rnd, _ = parts
    r = json.load(open(f))
    r.update(layout=layout, bench_mode=mode, server=server, round=int(rnd))
    runs.append(r)
stats = {}
for f in glob.glob(os.path.join(tmp, "runs", "*.tlsfront-stats-*.json")):
    try: stats[os.path.basename(f)] = json.load(open(f))
    except Exception: pass

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
summary = {}
for r in runs:
    summary.setdefault((r["layout"], r["bench_mode"], r["server"]), []).append(r)
agg = {}
for key, rs in summary.items():
    checked = sum(r["resumption_checked"] for r in rs)
    rates = [r["handshakes_per_s"] for r in rs]
    agg[key] = {
        "runs": len(rs),
        "hs_per_s_median": med(rates), "hs_per_s_min": min(rates), "hs_per_s_max": max(rates),
        "hs_per_cpu_s_median": med([r["handshakes_per_server_cpu_s"] for r in rs]),
        "server_cpu_util_median": med([r["server_cpu_util"] for r in rs]),
        "p99_us_median": med([r["handshake_latency_us"]["p99"] for r in rs]),
        "p50_us_median": med([r["handshake_latency_us"]["p50"] for r in rs]),
        "resumed_fraction": (sum(r["resumed"] for r in rs) / checked) if checked else None,
        "errors": sum(r["errors_total"] for r in rs),
        "error_kinds": sorted({k for r in rs for k in r["errors"]}),
    }

def fmt(x, spec="{:.0f}"):
    return "-" if x is None else spec.format(x)
def ratio(a, b):
    return "-" if not a or not b else "{:.2f}".format(b / a)
def pct(x):
    return "-" if x is None else "{:.1f} %".format(100 * x)
layout_title = {
    "a": "Layout a: server pinned to CPU 0 (1 worker), tlsload and upstream on CPU 1 (per-core figures)",
    "b": "Layout b: server on both CPUs (2 workers), tlsload and upstream unpinned on the same 2 CPUs "
         "(caveat: client and server compete for the cores; read the ratios)",
}
lines = []
for layout in layouts:
    if not any(k[0] == layout for k in agg):
        continue
    lines += ["", "### " + layout_title.get(layout, layout), "",
              "| mode | nginx hs/s | tlsfront hs/s | ratio | nginx hs/CPU-s | tlsfront hs/CPU-s | ratio "
              "| p99 ms nginx / tlsfront | resumed nginx / tlsfront | server CPU nginx / tlsfront | errors n / t |",
              "|---|---:|---:|---:|---:|---:|---:|---|---|---|---|"]
    for mode in modes:
        n = agg.get((layout, mode, "nginx")); t = agg.get((layout, mode, "tlsfront"))
        if not n or not t:
            continue
        lines.append("| {} | {} | {} | **{}** | {} | {} | **{}** | {} / {} | {} / {} | {} / {} | {} / {} |".format(
            mode, fmt(n["hs_per_s_median"]), fmt(t["hs_per_s_median"]),
            ratio(n["hs_per_s_median"], t["hs_per_s_median"]),
            fmt(n["hs_per_cpu_s_median"]), fmt(t["hs_per_cpu_s_median"]),
            ratio(n["hs_per_cpu_s_median"], t["hs_per_cpu_s_median"]),
            fmt(n["p99_us_median"] and n["p99_us_median"] / 1000, "{:.1f}"),
            fmt(t["p99_us_median"] and t["p99_us_median"] / 1000, "{:.1f}"),
            pct(n["resumed_fraction"]), pct(t["resumed_fraction"]),
            pct(n["server_cpu_util_median"]), pct(t["server_cpu_util_median"]),
            n["errors"], t["errors"]))
    errs = {(m, s): agg[(layout, m, s)]["error_kinds"] for m in modes for s in ("nginx", "tlsfront")
            if (layout, m, s) in agg and agg[(layout, m, s)]["error_kinds"]}
    for (m, s), kinds in errs.items():
        lines.append("")
        lines.append("errors {} {}: {}".format(m, s, "; ".join(kinds)))

surv_rows = []
sp = os.path.join(tmp, "survival.tsv")
if survival == "1" and os.path.exists(sp):
    cells = {}
    for line in open(sp):
        server, mech, phase, res = line.rstrip("\n").split("\t")
        cells[(server, mech, phase)] = res
    names = {"id12": "TLS 1.2 session ID (tickets off)", "ticket12": "TLS 1.2 ticket",
             "tls13": "TLS 1.3 ticket (stateless)", "tls13cache": "TLS 1.3 stateful (tickets off, server cache)"}
    lines += ["", "### Resumption survival (openssl s_client -sess_out / -sess_in, a session taken before the event)", "",
              "| mechanism | nginx: no event | nginx: reload | nginx: restart | tlsfront: no event | tlsfront: reload | tlsfront: restart |",
              "|---|---|---|---|---|---|---|"]
    for mech in ("id12", "ticket12", "tls13", "tls13cache"):
        row = [cells.get((s, mech, p), "-") for s in ("nginx", "tlsfront") for p in ("baseline", "reload", "restart")]
        surv_rows.append({"mechanism": mech, "cells": row})
        lines.append("| {} | {} |".format(names[mech], " | ".join(row)))

text = "\n".join(lines).lstrip("\n") + "\n"
print(text)
os.makedirs(out, exist_ok=True)
header = ("# tlsfront vs nginx: {date}\n\nmachine: {cpu_model}, {cpus} CPUs, kernel {kernel}; {nginx}; {openssl}; "
          "load average before {lb}, after {la}; tlsfront {revision}\nruns: {rounds} rounds x {secs:g} s per mode and server, alternating; "
          "{request_bytes} B request, {response_bytes} B response through the upstream; niceness {nice}\n\n").format(
    lb=" ".join(machine["loadavg_before"]), la=" ".join(machine["loadavg_after"]), **machine)
if load == "1":
    open(os.path.join(out, "compare.md"), "w").write(header + text)
    json.dump({"machine": machine,
               "summary": [dict(layout=k[0], mode=k[1], server=k[2], **v) for k, v in sorted(agg.items())],
               "survival": surv_rows, "tlsfront_stats": stats, "runs": runs},
              open(os.path.join(out, "compare.json"), "w"), indent=1)
elif surv_rows:
    open(os.path.join(out, "survival.md"), "w").write(text)

# --- SVG: handshakes/s per mode, nginx vs tlsfront, median bar, min-max whisker
panels = [l for l in layouts if any(k[0] == l for k in agg)]
if load == "1" and panels:
    W, H, top, bottom, left = 980, 340, 60, 70, 70
    colors = {"nginx": "#8c8c8c", "tlsfront": "#1f77b4"}
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">'
           .format(W, H * len(panels)),
           '<rect width="100%" height="100%" fill="white"/>']
    for pi, layout in enumerate(panels):
        y0 = pi * H
        ms = [m for m in modes if (layout, m, "nginx") in agg and (layout, m, "tlsfront") in agg]
        vmax = max(agg[(layout, m, s)]["hs_per_s_max"] for m in ms for s in ("nginx", "tlsfront")) * 1.1 or 1
        ph = H - top - bottom
        pw = W - left - 20
        title = {"a": "a: server on 1 CPU (1 worker), client on the other",
                 "b": "b: server on 2 CPUs (2 workers), client shares them"}.get(layout, layout)
        svg.append('<text x="{}" y="{}" font-size="14" font-weight="bold">layout {}</text>'.format(left, y0 + 20, title))
        svg.append('<text x="{}" y="{}" fill="#555">handshakes/s through a TLS-terminating TCP proxy: median of {} runs, '
                   'whiskers min-max</text>'.format(left, y0 + 38, machine["rounds"]))
        # y grid
        step = 10 ** max(0, len(str(int(vmax))) - 1)
        for mult in (1, 2, 5):
            if vmax / (step * mult) <= 8:
                step *= mult; break
        v = 0
        while v <= vmax:
            y = y0 + top + ph - v / vmax * ph
            svg.append('<line x1="{}" x2="{}" y1="{:.1f}" y2="{:.1f}" stroke="#ddd"/>'.format(left, left + pw, y, y))
            svg.append('<text x="{}" y="{:.1f}" text-anchor="end">{}</text>'.format(left - 6, y + 4, int(v)))
            v += step
        gw = pw / max(1, len(ms))
        bw = gw * 0.32
        for mi, m in enumerate(ms):
            gx = left + mi * gw + gw * 0.15
            for si, s in enumerate(("nginx", "tlsfront")):
                a = agg[(layout, m, s)]
                x = gx + si * (bw + 4)
                h = a["hs_per_s_median"] / vmax * ph
                y = y0 + top + ph - h
                svg.append('<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}"/>'.format(x, y, bw, h, colors[s]))
                ylo = y0 + top + ph - a["hs_per_s_min"] / vmax * ph
                yhi = y0 + top + ph - a["hs_per_s_max"] / vmax * ph
                cx = x + bw / 2
                svg.append('<line x1="{0:.1f}" x2="{0:.1f}" y1="{1:.1f}" y2="{2:.1f}" stroke="black"/>'.format(cx, ylo, yhi))
                for yy in (ylo, yhi):
                    svg.append('<line x1="{:.1f}" x2="{:.1f}" y1="{:.1f}" y2="{:.1f}" stroke="black"/>'.format(cx - 4, cx + 4, yy, yy))
                svg.append('<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="10">{:.0f}</text>'.format(cx, yhi - 4, a["hs_per_s_median"]))
            n, t = agg[(layout, m, "nginx")], agg[(layout, m, "tlsfront")]
            lx = left + mi * gw + gw / 2
            svg.append('<text x="{:.1f}" y="{}" text-anchor="middle">{}</text>'.format(lx, y0 + top + ph + 18, m))
            svg.append('<text x="{:.1f}" y="{}" text-anchor="middle" fill="#555">x{}</text>'.format(
                lx, y0 + top + ph + 34, ratio(n["hs_per_s_median"], t["hs_per_s_median"])))
        lx = left + pw - 170
        for si, s in enumerate(("nginx", "tlsfront")):
            svg.append('<rect x="{}" y="{}" width="12" height="12" fill="{}"/>'.format(lx + si * 85, y0 + 28, colors[s]))
            svg.append('<text x="{}" y="{}">{}</text>'.format(lx + si * 85 + 16, y0 + 38, s))
    svg.append('<text x="{}" y="{}" fill="#555" font-size="11">xN = tlsfront/nginx (median). {}; kernel {}.</text>'.format(
        left, H * len(panels) - 10, machine["cpu_model"], machine["kernel"]))
    svg.append("</svg>")
    open(os.path.join(out, "compare.svg"), "w").write("\n".join(svg) + "\n")
    print("wrote {}/compare.md, compare.json, compare.svg".format(out))
EOF
