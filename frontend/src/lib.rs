//! tlsfront: a TLS termination frontend for Linux edge hosts.
//!
//! Each connection lives on one per-core io_uring worker ([`worker`], the
//! driver of [`uring`]); TLS is rustls's unbuffered API ([`tls`]); the
//! protocol logic is a sans-IO state machine per connection
//! ([`connection`]); the PROXY protocol headers are read and built by [`proxy_protocol`];
//! configuration is sysctl-style ([`config`]); the running process answers
//! on a unix control socket ([`control`]) with the counters of [`metrics`].
//! The architecture is described in `docs/ARCHITECTURE.md`.
//!
//! `unsafe` is denied everywhere but in [`shm`] (the one shared-memory
//! primitive), [`uring`] (the io_uring driver: memory the kernel reads and
//! writes after the call that submitted it) and [`steering`] (the eBPF ABI:
//! `Pod` for a value type the kernel reads, the bpf(2) link commands, the
//! descriptor received with SCM_RIGHTS); each block states its soundness
//! invariant above it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod check;
pub mod client_auth;
pub mod client_hello;
pub mod clock;
pub mod config;
pub mod connection;
pub mod control;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hash;
pub mod hello_gate;
pub mod live;
pub mod metrics;
pub mod ocsp;
pub mod proxy_protocol;
pub mod server;
pub mod server_name;
pub mod session_cache;
#[allow(unsafe_code)]
pub mod shm;
#[allow(unsafe_code)]
pub mod steering;
pub mod tickets;
pub mod tls;
pub mod upstream;
pub mod upstream_pool;
pub mod uring;
pub mod worker;

/// The suite's one prerequisite check (`tests/src/prereq.rs`), shared with
/// the unit tests here: a missing prerequisite fails a test, never skips it.
#[cfg(test)]
#[path = "../../tests/src/prereq.rs"]
#[allow(dead_code)] // shared file: the unit tests use part of it
pub(crate) mod prereq;
