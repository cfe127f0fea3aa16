#!/usr/bin/env bash
# Installs everything tlsfront needs to build, test and benchmark on Debian
# (bookworm, with LLVM 22 from apt.llvm.org) where Rust comes from rustup.
#
#   - apt packages: LLVM 22 dev files (for bpf-linker), openssl, ethtool,
#     iproute2, curl, nginx + stream module (the benchmark reference; its
#     service is stopped and disabled, benchmarks start their own instance),
#     redis-server (the shared session store of the fleet test; its service
#     is stopped and disabled too, the test starts its own instance),
#     haproxy and hitch (the other peers of bench/compare.sh; their services
#     are stopped and disabled too), linux-perf when `perf` is missing (the
#     io_uring tracepoint counts of bench/compare.sh), faketime (an expired
#     OCSP response for tests/tests/ocsp.rs)
#   - rust-src for the installed `nightly` toolchain (the eBPF crate is built
#     with -Z build-std=core by frontend/build.rs)
#   - bpf-linker 0.13.0 built against LLVM 22
#   - sslyze (PyPI) in a virtualenv, for the TLS scan test and script
#
# Idempotent, and quick when everything is present: it only checks then.
# It never installs or updates a Rust toolchain: the nightly that is installed
# is the one used (newer nightlies carry LLVM 23, which bpf-linker 0.13.0 with
# LLVM 22 cannot read), and the stable one is pinned by rust-toolchain.toml.
# It starts no long-running process.
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
LLVM_PREFIX_DIR=/usr/lib/llvm-22
STABLE_TOOLCHAIN=1.95.0
EBPF_TOOLCHAIN=nightly
APT_PACKAGES=(
    llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev
    openssl ethtool iproute2 curl
    # faketime: an OCSP response made "in 2021" is expired for certain
    # (tests/tests/ocsp.rs), without waiting for one to run out.
    faketime
    nginx libnginx-mod-stream
    redis-server
    haproxy hitch
)
# perf (the io_uring counts of bench/compare.sh): Debian's linux-perf, only
# when no perf is on PATH (a perf built for the running kernel is better).
if ! command -v perf >/dev/null; then
    APT_PACKAGES+=(linux-perf)
fi

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "not root and no sudo: cannot install apt packages"
    SUDO=(sudo)
fi

# cargo/rustup live in ~/.cargo/bin; a non-login shell may not have it on PATH.
if ! command -v cargo >/dev/null && [[ -f "${CARGO_HOME:-$HOME/.cargo}/env" ]]; then
    # shellcheck disable=SC1091
    . "${CARGO_HOME:-$HOME/.cargo}/env"
fi
command -v rustup >/dev/null || die "rustup not found (Rust must be installed through rustup)"
command -v cargo >/dev/null || die "cargo not found"

# --- apt packages ------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing apt packages: ${missing[*]}"
    # Keep Debian from starting services (nginx, redis) during the install; only
    # when no policy is in place already (containers often have one).
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        created_policy=1
    fi
    remove_policy() { if ((created_policy)); then "${SUDO[@]}" rm -f "$policy"; fi; }
    trap remove_policy EXIT
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    remove_policy
    trap - EXIT
else
    say "apt packages present"
fi

# --- nginx, redis, haproxy, hitch: installed for benchmarks and tests, never
# running as a system service --------------------------------------------------
# Each service: name, pid file of the Debian-packaged instance, how to stop it.
stop_service_instance() {
    local name=$1 pidfile=$2
    shift 2
    if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        say "stopping the $name service instance"
        "${SUDO[@]}" "$@" || "${SUDO[@]}" kill "$(cat "$pidfile")" || true
    fi
}
for service in nginx redis-server haproxy hitch; do
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        if systemctl is-enabled --quiet "$service" 2>/dev/null || systemctl is-active --quiet "$service" 2>/dev/null; then
            say "stopping and disabling the $service service"
            "${SUDO[@]}" systemctl disable --now --quiet "$service"
        fi
    else
        # No systemd: SysV links (started at boot by sysvinit-style runners).
        if compgen -G "/etc/rc[2-5].d/S*$service" >/dev/null && command -v update-rc.d >/dev/null; then
            say "disabling the $service init script"
            "${SUDO[@]}" update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    fi
done
if ! [[ -d /run/systemd/system ]]; then
    # The service instances are the ones with Debian's default pid files;
    # benchmark and test instances use their own.
    stop_service_instance nginx /run/nginx.pid nginx -s stop
    stop_service_instance redis-server /run/redis/redis-server.pid \
        kill "$(cat /run/redis/redis-server.pid 2>/dev/null || echo 0)"
    stop_service_instance haproxy /run/haproxy.pid \
        kill "$(cat /run/haproxy.pid 2>/dev/null || echo 0)"
    stop_service_instance hitch /run/hitch/hitch.pid \
        kill "$(cat /run/hitch/hitch.pid 2>/dev/null || echo 0)"
fi

# --- Rust toolchains: check only --------------------------------------------
toolchains=$(rustup toolchain list)
grep -q "^${STABLE_TOOLCHAIN}-" <<<"$toolchains" ||
    die "rustup toolchain ${STABLE_TOOLCHAIN} (rust-toolchain.toml) is not installed"
grep -q "^${EBPF_TOOLCHAIN}-" <<<"$toolchains" ||
    die "rustup toolchain '${EBPF_TOOLCHAIN}' (for the eBPF build) is not installed; this script does not install toolchains"

if rustup component list --toolchain "$EBPF_TOOLCHAIN" --installed 2>/dev/null | grep -qx 'rust-src'; then
    say "rust-src for ${EBPF_TOOLCHAIN} present"
else
    say "adding rust-src to ${EBPF_TOOLCHAIN}"
    rustup component add rust-src --toolchain "$EBPF_TOOLCHAIN"
fi

# --- bpf-linker --------------------------------------------------------------
bpf_linker_ok() {
    [[ $(bpf-linker --version 2>/dev/null || true) == "bpf-linker ${BPF_LINKER_VERSION}" ]]
}
if ! bpf_linker_ok; then
    # Another `cargo install bpf-linker` may be running (e.g. started by hand):
    # wait for it rather than building a second copy.
    if pgrep -f 'cargo install bpf-linker' >/dev/null; then
        say "waiting for a running 'cargo install bpf-linker' to finish"
        while pgrep -f 'cargo install bpf-linker' >/dev/null; do sleep 5; done
    fi
fi
if bpf_linker_ok; then
    say "bpf-linker ${BPF_LINKER_VERSION} present"
else
    say "building bpf-linker ${BPF_LINKER_VERSION} against LLVM 22 (takes a few minutes)"
    [[ -x $LLVM_PREFIX_DIR/bin/llvm-config ]] || die "$LLVM_PREFIX_DIR/bin/llvm-config missing (llvm-22-dev)"
    # LLVM_SYS_221_PREFIX is read by llvm-sys; LLVM_PREFIX by bpf-linker's own
    # build script, which otherwise takes the first llvm-config on PATH (may
    # be an older LLVM) and fails to link with "unable to find library -lLLVM".
    export LLVM_SYS_221_PREFIX=$LLVM_PREFIX_DIR LLVM_PREFIX=$LLVM_PREFIX_DIR
    install=(cargo "+${STABLE_TOOLCHAIN}" install bpf-linker --version "$BPF_LINKER_VERSION"
        --no-default-features --features llvm-22 --force)
    "${install[@]}" --locked || {
        say "retrying without --locked"
        "${install[@]}"
    }
    bpf_linker_ok || die "bpf-linker ${BPF_LINKER_VERSION} installed but 'bpf-linker --version' says: $(bpf-linker --version 2>&1 || true)"
    say "bpf-linker ${BPF_LINKER_VERSION} installed"
fi

# --- sslyze: the TLS scanner of tests/tls_scan.rs and scripts/tls-scan.sh ----
# From PyPI, in its own virtualenv (its pinned Python dependencies touch
# nothing else), at a fixed path the test and the script look in.
SSLYZE_VERSION=6.3.1
SSLYZE_VENV=$HOME/.local/share/tlsfront/sslyze
sslyze_version() {
    "$SSLYZE_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("sslyze"))' 2>/dev/null || true
}
if [[ $(sslyze_version) == "$SSLYZE_VERSION" && -x $SSLYZE_VENV/bin/sslyze ]]; then
    say "sslyze ${SSLYZE_VERSION} present"
else
    say "installing sslyze ${SSLYZE_VERSION} from PyPI into ${SSLYZE_VENV} (under a minute)"
    command -v python3 >/dev/null || die "python3 not found (needed for sslyze)"
    python3 -m venv --clear "$SSLYZE_VENV" ||
        die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    "$SSLYZE_VENV/bin/pip" install --quiet --disable-pip-version-check "sslyze==${SSLYZE_VERSION}"
    [[ $(sslyze_version) == "$SSLYZE_VERSION" ]] || die "sslyze ${SSLYZE_VERSION} did not install"
    say "sslyze ${SSLYZE_VERSION} installed"
fi

say "done"
