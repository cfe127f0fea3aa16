//! tlsfront: a TLS termination frontend for Linux edge hosts.
//!
//! Each connection lives on one per-core io_uring worker ([`worker`]); TLS
//! is rustls ([`tls`]); the protocol logic is a sans-IO relay ([`proxy`]);
//! configuration is sysctl-style ([`config`]); the running process answers
//! on a unix control socket ([`control`]) with the counters of [`metrics`].
//! The architecture is described in `DESIGN.md` of the project.
//!
//! `unsafe` is denied everywhere but in [`shm`] (the one shared-memory
//! primitive) and [`steering`] (the eBPF map ABI: `Pod` for a value type the
//! kernel reads); each block states its soundness invariant above it.
#![deny(unsafe_code)]

pub mod config;
pub mod control;
pub mod fuzzing;
pub mod metrics;
pub mod proxy;
pub mod session_cache;
#[allow(unsafe_code)]
pub mod shm;
#[allow(unsafe_code)]
pub mod steering;
pub mod tickets;
pub mod tls;
pub mod upstream;
pub mod worker;
