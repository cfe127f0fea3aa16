//! tlsfront: a TLS termination frontend for Linux edge hosts.
//!
//! Each connection lives on one per-core io_uring worker (`worker`, the
//! driver of `uring`); TLS is rustls's unbuffered API ([`tls`]); the
//! protocol logic, TLS on one side and the plaintext upstream on the other,
//! is a sans-IO state machine per connection (`relay`); the PROXY protocol headers are read and built by `proxy_protocol`;
//! configuration is sysctl-style ([`config`]); [`server`] assembles the
//! process, whose running state is `live`; it answers on a unix control
//! socket ([`control`]) with the counters of [`metrics`]. The architecture
//! is described in `docs/ARCHITECTURE.md`.
//!
//! Only what the binary, the end-to-end tests, the benches and the fuzz
//! targets use is `pub` (`config`, `server`, `check`, `control`, `metrics`,
//! `session_cache`, `tickets`, `tls`; `fuzzing` behind the `fuzzing`
//! feature); every other module is `pub(crate)`.
//!
//! `unsafe` is denied everywhere but in `shm` (the one shared-memory
//! primitive), `uring` (the io_uring driver: memory the kernel reads and
//! writes after the call that submitted it) and `steering` (the eBPF ABI:
//! `Pod` for a value type the kernel reads, the bpf(2) link commands, the
//! descriptor received with SCM_RIGHTS); each block states its soundness
//! invariant above it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod check;
pub(crate) mod client_auth;
pub(crate) mod client_hello;
pub(crate) mod clock;
pub mod config;
pub mod control;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub(crate) mod hash;
pub(crate) mod hello_gate;
pub(crate) mod live;
pub mod metrics;
pub(crate) mod ocsp;
pub(crate) mod proxy_protocol;
pub(crate) mod relay;
pub(crate) mod resume_hint;
pub(crate) mod seal;
pub mod server;
pub(crate) mod server_name;
pub mod session_cache;
#[allow(unsafe_code)]
pub(crate) mod shm;
#[allow(unsafe_code)]
pub(crate) mod steering;
pub mod tickets;
pub mod tls;
pub(crate) mod upstream;
pub(crate) mod upstream_pool;
pub(crate) mod uring;
pub(crate) mod user_access;
pub(crate) mod worker;

/// The suite's one prerequisite check (`tests/src/prereq.rs`), shared with
/// the unit tests here: a missing prerequisite fails a test, never skips it.
#[cfg(test)]
#[path = "../../tests/src/prereq.rs"]
#[allow(dead_code)] // shared file: the unit tests use part of it
pub(crate) mod prereq;
