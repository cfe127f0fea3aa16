//! tlsfront eBPF programs, built for `bpfel-unknown-none` by
//! `frontend/build.rs` (aya-build, nightly toolchain, bpf-linker).
//!
//! - `tlsfront_xdp` (XDP): parses the frame with `tlsfront_shared::parse`;
//!   a TCP segment to a port in `PORTS` is hashed (`tlsfront_shared::worker_slot`,
//!   SipHash-1-3 of the 4-tuple keyed by `FLOW_KEY`) onto a worker slot, and
//!   moved to that worker's CPU through `CPUMAP` (left in place when it
//!   already runs there). Everything else passes.
//! - `tlsfront_reuseport` (SK_REUSEPORT): selects `SOCKETS[current CPU]`,
//!   the listener of the worker pinned to this CPU; with no listener for
//!   this CPU it selects nothing and the kernel's hash chooses.
//!
//! Map names, key/value types and the parser/hash live in `tlsfront-shared`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{sk_action, xdp_action},
    helpers::bpf_get_smp_processor_id,
    macros::{map, sk_reuseport, xdp},
    maps::{Array, CpuMap, HashMap, PerCpuArray, ReusePortSockArray},
    programs::{SkReuseportContext, XdpContext},
};
use tlsfront_shared::{
    parse, worker_slot, FlowHashKey, Packet, Parsed, SteeringStats, CONFIG_LEN, CONFIG_WORKERS,
    DEFAULT_MAX_CPUS, MAX_WORKERS,
};

/// Destination ports (host byte order) whose TCP segments are steered.
#[map(name = "PORTS")]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);

/// Worker slot → CPU of that worker.
#[map(name = "CPUS")]
static CPUS: Array<u32> = Array::with_max_entries(MAX_WORKERS, 0);

/// `CONFIG[CONFIG_WORKERS]` = number of valid slots in `CPUS`.
#[map(name = "CONFIG")]
static CONFIG: Array<u32> = Array::with_max_entries(CONFIG_LEN, 0);

/// CPU id → queue of that CPU (`max_entries` raised by the loader).
#[map(name = "CPUMAP")]
static CPUMAP: CpuMap = CpuMap::with_max_entries(DEFAULT_MAX_CPUS, 0);

/// CPU id → listener of the worker pinned to that CPU.
#[map(name = "SOCKETS")]
static SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(DEFAULT_MAX_CPUS, 0);

/// The key of the flow hash (one entry), random per start.
#[map(name = "FLOW_KEY")]
static FLOW_KEY: Array<FlowHashKey> = Array::with_max_entries(1, 0);

/// Per-CPU counters of steered segments, by worker slot: one counter for
/// every possible worker, whatever CPU ids the workers have.
#[map(name = "STEERED")]
static STEERED: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_WORKERS, 0);

/// Per-CPU counters (one entry).
#[map(name = "STATS")]
static STATS: PerCpuArray<SteeringStats> = PerCpuArray::with_max_entries(1, 0);

/// The packet memory `[data, data_end)` of an XDP context.
struct XdpPacket {
    data: usize,
    data_end: usize,
}

impl Packet for XdpPacket {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.data + offset;
        // The one bounds check of this header against data_end.
        if start + N > self.data_end {
            return None;
        }
        // SAFETY: [start, start + N) lies inside [data, data_end) (checked
        // just above), which the kernel guarantees is readable packet memory
        // for the duration of the program; `read_unaligned` makes no
        // alignment assumption.
        Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
    }
}

/// This CPU's counters, if the map lookup succeeds.
#[inline(always)]
fn stats() -> Option<&'static mut SteeringStats> {
    let ptr = STATS.get_ptr_mut(0)?;
    // SAFETY: a per-CPU array value is only reachable from this CPU, and a
    // BPF program is not preempted by another program on the same CPU that
    // could hold a second reference to it while this one is in use (each
    // program takes the reference, updates and drops it without calls in
    // between); the pointer is valid for the program's run.
    Some(unsafe { &mut *ptr })
}

#[xdp]
pub fn tlsfront_xdp(ctx: XdpContext) -> u32 {
    let packet = XdpPacket {
        data: ctx.data(),
        data_end: ctx.data_end(),
    };
    let Some(stats) = stats() else {
        return xdp_action::XDP_PASS;
    };
    stats.xdp_seen += 1;
    let key = match parse(&packet) {
        Parsed::Tcp(key) => key,
        Parsed::Other => {
            stats.xdp_passed += 1;
            return xdp_action::XDP_PASS;
        }
        Parsed::Malformed => {
            stats.xdp_passed += 1;
            stats.xdp_parse_errors += 1;
            return xdp_action::XDP_PASS;
        }
    };
    if PORTS.get_ptr(key.dst_port).is_none() {
        stats.xdp_passed += 1;
        return xdp_action::XDP_PASS;
    }
    let workers = CONFIG.get(CONFIG_WORKERS).copied().unwrap_or(0);
    if workers == 0 {
        stats.xdp_passed += 1;
        return xdp_action::XDP_PASS;
    }
    let Some(hash_key) = FLOW_KEY.get(0) else {
        stats.xdp_passed += 1;
        return xdp_action::XDP_PASS;
    };
    let Some(slot) = worker_slot(&key, hash_key, workers) else {
        stats.xdp_passed += 1;
        return xdp_action::XDP_PASS;
    };
    let Some(&cpu) = CPUS.get(slot) else {
        stats.xdp_passed += 1;
        return xdp_action::XDP_PASS;
    };
    if let Some(n) = STEERED.get_ptr_mut(slot) {
        // SAFETY: a per-CPU array value, reachable only from this CPU and
        // not shared with a concurrently running program (see `stats`).
        unsafe { *n += 1 };
    }
    // SAFETY: bpf_get_smp_processor_id has no preconditions.
    let here = unsafe { bpf_get_smp_processor_id() };
    if cpu == here {
        // Already on the worker's CPU: no need to queue it elsewhere.
        return xdp_action::XDP_PASS;
    }
    match CPUMAP.redirect(cpu, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => action,
        Err(action) => {
            stats.xdp_redirect_failed += 1;
            action
        }
    }
}

#[sk_reuseport]
pub fn tlsfront_reuseport(ctx: SkReuseportContext) -> u32 {
    // SAFETY: bpf_get_smp_processor_id has no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let selected = SOCKETS.select_reuseport(&ctx, cpu).is_ok();
    if let Some(stats) = stats() {
        if selected {
            stats.reuseport_selected += 1;
        } else {
            stats.reuseport_fallback += 1;
        }
    }
    sk_action::SK_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a real panic; this only
    // satisfies `no_std`.
    loop {}
}

/// Kernel license; GPL-compatible so that GPL-only helpers are available.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
