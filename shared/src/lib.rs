//! Types both the eBPF programs (`ebpf/`) and userspace (`frontend/`) read.
//!
//! Everything here is `#![no_std]` and `#[repr(C)]` so that the byte layout
//! is the same on both sides of the eBPF ABI.
#![no_std]
