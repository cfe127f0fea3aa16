#!/usr/bin/env bash
# Scans a running tlsfront with sslyze (a standard TLS scanner, from PyPI)
# and prints a summary: protocols, cipher suites, curves, renegotiation,
# compression, Heartbleed, CCS injection, ROBOT, downgrade protection,
# extended master secret, 0-RTT, resumption (sslyze's rates and tlsfront's own
# counters), OCSP stapling and the certificate.
#
#   scripts/tls-scan.sh [-- EXTRA_TLSFRONT_ARGS...]   (e.g. -- -o tls.protocols=1.3)
#
# It builds tlsfront (release; or uses $TLSFRONT_BIN), makes a throw-away CA
# and an ECDSA P-256 certificate for localhost with openssl, starts tlsfront
# on 127.0.0.1 (a free port, its own cache, ticket ring and control socket in
# a temporary directory) with the embedded defaults otherwise, runs sslyze
# (all its checks, TLS 1.2 resumption 20 times each way), checks TLS 1.3
# resumption with openssl s_client, prints the summary, and stops tlsfront.
# TLS_SCAN_JSON=FILE keeps sslyze's full JSON report there.
#
# sslyze comes from the virtualenv scripts/setup.sh makes
# (~/.local/share/tlsfront/sslyze), or $TLSFRONT_SSLYZE.
# Exit status: 0 when the scan ran and every check is as expected, 1 when a
# check is not, 2 when the scan could not run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

if ! command -v cargo >/dev/null && [[ -f "${CARGO_HOME:-$HOME/.cargo}/env" ]]; then
    # shellcheck disable=SC1091
    . "${CARGO_HOME:-$HOME/.cargo}/env"
fi

say() { printf 'tls-scan: %s\n' "$*" >&2; }
die() { printf 'tls-scan: error: %s\n' "$*" >&2; exit 2; }

[[ ${1:-} == -- ]] && shift
extra=("$@")

sslyze=${TLSFRONT_SSLYZE:-$HOME/.local/share/tlsfront/sslyze/bin/sslyze}
[[ -x $sslyze ]] || die "sslyze not found at $sslyze: run scripts/setup.sh"
python=$(dirname "$sslyze")/python
[[ -x $python ]] || python=python3
command -v openssl >/dev/null || die "openssl not found: run scripts/setup.sh"

if [[ -n ${TLSFRONT_BIN:-} ]]; then
    bin=$TLSFRONT_BIN
else
    say "building tlsfront (cargo build --release -p tlsfront)"
    cargo build --release -p tlsfront 2>&1 | grep -v '^warning: tlsfront@' >&2 || true
    bin=$root/target/release/tlsfront
fi
[[ -x $bin ]] || die "no tlsfront binary at $bin"

work=$(mktemp -d /dev/shm/tlsfront-scan.XXXXXX)
pid=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# A CA and an ECDSA P-256 leaf for localhost / 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$work/ca.key" -out "$work/ca.pem" -days 2 -subj "/CN=tlsfront scan CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$work/key.pem" -out "$work/leaf.csr" -subj /CN=localhost 2>/dev/null
printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' \
    'extendedKeyUsage=serverAuth' 'subjectAltName=DNS:localhost,IP:127.0.0.1' >"$work/leaf.ext"
openssl x509 -req -in "$work/leaf.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/leaf.ext" -out "$work/cert.pem" 2>/dev/null

port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" run \
    -o "net.listen=127.0.0.1:$port" \
    -o "tls.cert=$work/cert.pem" -o "tls.key=$work/key.pem" \
    -o "control.socket=$work/control.sock" \
    -o "cache.path=$work/session.cache" -o "tickets.path=$work/tickets.ring" \
    "${extra[@]}" >"$work/stdout" 2>"$work/stderr" &
pid=$!
for _ in $(seq 200); do
    grep -qx 'tlsfront: ready' "$work/stdout" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/stdout" "$work/stderr" >&2; die "tlsfront exited before it was ready"; }
    sleep 0.1
done
grep -qx 'tlsfront: ready' "$work/stdout" || { cat "$work/stdout" "$work/stderr" >&2; die "tlsfront not ready after 20s"; }
say "tlsfront ready on 127.0.0.1:$port (pid $pid)"

sslyze_version=$("$python" -c 'import importlib.metadata as m; print(m.version("sslyze"))' 2>/dev/null || echo '?')
say "running sslyze $sslyze_version"
json=$work/sslyze.json
"$sslyze" --json_out="$json" --certinfo_ca_file="$work/ca.pem" \
    --certinfo --sslv2 --sslv3 --tlsv1 --tlsv1_1 --tlsv1_2 --tlsv1_3 \
    --reneg --compression --heartbleed --openssl_ccs --robot --fallback \
    --elliptic_curves --ems --early_data --resum --resum_attempts=20 \
    "127.0.0.1:$port" >"$work/sslyze.txt" 2>&1 || { cat "$work/sslyze.txt" >&2; die "sslyze failed"; }
[[ -n ${TLS_SCAN_JSON:-} ]] && cp "$json" "$TLS_SCAN_JSON"

# TLS 1.3 resumption (sslyze tests TLS 1.2 only): openssl s_client, twice.
# The first keeps stdin open a moment: TLS 1.3 tickets come after the
# handshake (`-reconnect` does not wait for them).
tls13_resumed=no
if sleep 1 | openssl s_client -connect "127.0.0.1:$port" -tls1_3 -sess_out "$work/s13.pem" >/dev/null 2>&1 &&
    echo | openssl s_client -connect "127.0.0.1:$port" -tls1_3 -sess_in "$work/s13.pem" 2>/dev/null |
    grep -q '^Reused, TLSv1.3'; then
    tls13_resumed=yes
fi
stats=$("$bin" stats --socket "$work/control.sock" --json)

"$python" - "$json" "$tls13_resumed" "$stats" <<'EOF'
import json, sys

report = json.load(open(sys.argv[1]))
tls13_resumed = sys.argv[2]
stats = json.loads(sys.argv[3])["total"]
server = report["server_scan_results"][0]
if server["scan_status"] != "COMPLETED":
    print("scan failed:", server.get("connectivity_error_trace"))
    sys.exit(2)
scan = server["scan_result"]
problems = []

def res(name):
    c = scan[name]
    if c["status"] != "COMPLETED":
        problems.append(f"{name}: {c['status']} {c.get('error_reason')}")
        return {}
    return c["result"]

def check(ok, what):
    if not ok:
        problems.append(what)
    return "OK" if ok else "FAIL"

out = []
out.append(f"sslyze {report.get('sslyze_version', '?')} against tlsfront on {server['server_location']['hostname']}:{server['server_location']['port']} (ECDSA P-256 certificate)")
out.append("")
out.append("Protocols")
for name, label, want in [("ssl_2_0", "SSL 2.0", False), ("ssl_3_0", "SSL 3.0", False),
                          ("tls_1_0", "TLS 1.0", False), ("tls_1_1", "TLS 1.1", False),
                          ("tls_1_2", "TLS 1.2", True), ("tls_1_3", "TLS 1.3", True)]:
    suites = [s["cipher_suite"]["name"] for s in res(name + "_cipher_suites").get("accepted_cipher_suites", [])]
    got = bool(suites)
    out.append(f"  {label:8} {'accepted' if got else 'refused':9} {check(got == want, label + (' accepted' if got else ' refused'))}")
    if got:
        for s in res(name + "_cipher_suites")["accepted_cipher_suites"]:
            ke = s.get("ephemeral_key") or {}
            kx = f"{ke.get('type_name', '')} {ke.get('curve_name') or ''}".strip()
            weak = any(w in s["cipher_suite"]["name"] for w in ("CBC", "RC4", "3DES", "DES", "NULL", "EXPORT", "anon", "MD5"))
            fs = s["cipher_suite"]["name"].startswith("TLS_ECDHE_") or "_WITH_" not in s["cipher_suite"]["name"]
            check(fs and not weak, f"weak or non-forward-secret suite {s['cipher_suite']['name']}")
            out.append(f"             {s['cipher_suite']['name']:48} {kx}")
curves = res("elliptic_curves")
if curves:
    out.append(f"  key exchange groups: {', '.join(c['name'] for c in curves.get('supported_curves') or [])}")
out.append("")
out.append("Vulnerabilities and hardening")
reneg = res("session_renegotiation")
out.append(f"  secure renegotiation (RFC 5746)       {'supported' if reneg.get('supports_secure_renegotiation') else 'NOT supported'}  {check(reneg.get('supports_secure_renegotiation') is True, 'secure renegotiation')}")
out.append(f"  client-initiated renegotiation DoS    {'VULNERABLE' if reneg.get('is_vulnerable_to_client_renegotiation_dos') else 'not vulnerable'}  {check(reneg.get('is_vulnerable_to_client_renegotiation_dos') is False, 'client renegotiation')}")
comp = res("tls_compression").get("supports_compression")
out.append(f"  compression (CRIME)                   {'ENABLED' if comp else 'disabled'}  {check(comp is False, 'compression')}")
hb = res("heartbleed").get("is_vulnerable_to_heartbleed")
out.append(f"  Heartbleed                            {'VULNERABLE' if hb else 'not vulnerable'}  {check(hb is False, 'heartbleed')}")
ccs = res("openssl_ccs_injection").get("is_vulnerable_to_ccs_injection")
out.append(f"  OpenSSL CCS injection                 {'VULNERABLE' if ccs else 'not vulnerable'}  {check(ccs is False, 'ccs injection')}")
robot = res("robot").get("robot_result", "?")
out.append(f"  ROBOT                                 {robot}  {check(robot.startswith('NOT_VULNERABLE'), 'robot')}")
scsv = res("tls_fallback_scsv").get("supports_fallback_scsv")
out.append(f"  downgrade protection (FALLBACK_SCSV)  {'supported' if scsv else 'NOT supported'}  {check(scsv is True, 'fallback scsv')}")
ems = res("tls_extended_master_secret").get("supports_ems_extension")
out.append(f"  extended master secret (TLS 1.2)      {'supported' if ems else 'NOT supported'}  {check(ems is True, 'extended master secret')}")
ed = res("tls_1_3_early_data").get("supports_early_data")
out.append(f"  TLS 1.3 early data (0-RTT)            {'accepted' if ed else 'not accepted'} (tls.early_data_max = 0, the default)")
out.append("")
out.append("Session resumption")
r = res("session_resumption")
out.append(f"  TLS 1.2 session IDs   sslyze: {r.get('session_id_resumption_result')} ({r.get('session_id_successful_resumptions_count')}/{r.get('session_id_attempted_resumptions_count')})  {check(r.get('session_id_successful_resumptions_count') == r.get('session_id_attempted_resumptions_count'), 'session id resumption')}")
out.append(f"  TLS 1.2 tickets       sslyze: {r.get('tls_ticket_resumption_result')} ({r.get('tls_ticket_successful_resumptions_count')}/{r.get('tls_ticket_attempted_resumptions_count')})")
out.append(f"                        (sslyze counts a ticket resumption only if the server sends no new ticket;")
out.append(f"                        rustls renews the ticket on each resumption, which RFC 5077 allows)")
tickets = stats.get("resumed_tls12_ticket", 0)
out.append(f"  tlsfront counters     resumed by session ID: {stats.get('resumed_tls12_id')}, by TLS 1.2 ticket: {tickets}, TLS 1.3: {stats.get('resumed_tls13')}, full handshakes: {stats.get('full_tls12', 0) + stats.get('full_tls13', 0)}  {check(tickets >= (r.get('tls_ticket_attempted_resumptions_count') or 1), 'ticket resumptions seen by tlsfront')}")
out.append(f"  TLS 1.3 resumption    openssl s_client -sess_in: {'resumed' if tls13_resumed == 'yes' else 'NOT resumed'}  {check(tls13_resumed == 'yes', 'tls 1.3 resumption')}")
out.append("")
out.append("Certificate")
ci = res("certificate_info")
for d in ci.get("certificate_deployments", [])[:1]:
    leaf = d["received_certificate_chain"][0]
    pk = leaf["public_key"]
    out.append(f"  {leaf['subject']['rfc4514_string']}, {pk.get('algorithm')} {pk.get('ec_curve_name') or pk.get('key_size')}, signed {leaf.get('signature_hash_algorithm', {}).get('name')}; chain order {'valid' if d.get('received_chain_has_valid_order') else 'INVALID'}")
    trusted = [p for p in d.get("path_validation_results", []) if p.get("was_validation_successful")]
    out.append(f"  trusted by the scan CA: {'yes' if trusted else 'no'}")
    out.append(f"  OCSP stapling: {'stapled response' if d.get('ocsp_response') else 'not supported (no response stapled)'}; OCSP must-staple: {'yes' if d.get('leaf_certificate_has_must_staple_extension') else 'no'}")
out.append("")
if problems:
    out.append("PROBLEMS: " + "; ".join(problems))
else:
    out.append("all checks as expected")
print("\n".join(out))
sys.exit(1 if problems else 0)
EOF
