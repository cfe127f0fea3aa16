//! tlsfront eBPF programs, built for `bpfel-unknown-none` by
//! `frontend/build.rs` (aya-build, nightly toolchain, bpf-linker).
//!
//! The steering issue adds the XDP program (hash(4-tuple) → worker CPU via
//! CPUMAP) and the SK_REUSEPORT program (listener[n] of the worker pinned to
//! the current CPU). Map key/value types live in `tlsfront-shared`.
#![no_std]
#![no_main]

// No programs yet (bpf-linker links an object without any); both crates are
// linked now so that aya-ebpf and the shared `#[repr(C)]` types are checked
// against the BPF target from the start.
use aya_ebpf as _;
use tlsfront_shared as _;

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
