//! tlsfront: a TLS termination frontend for Linux edge hosts.
//!
//! Each connection lives on one per-core io_uring worker ([`worker`]); TLS
//! is rustls ([`tls`]); the protocol logic is a sans-IO relay ([`proxy`]);
//! configuration is sysctl-style ([`config`]); the running process answers
//! on a unix control socket ([`control`]) with the counters of [`metrics`].
//! The architecture is described in `DESIGN.md` of the project.

pub mod config;
pub mod control;
pub mod fuzzing;
pub mod metrics;
pub mod proxy;
pub mod session_cache;
pub mod shm;
pub mod steering;
pub mod tickets;
pub mod tls;
pub mod upstream;
pub mod worker;

/// The suite's one prerequisite check (`tests/src/prereq.rs`), shared with
/// the unit tests here: a missing prerequisite fails a test, never skips it.
#[cfg(test)]
#[path = "../../tests/src/prereq.rs"]
#[allow(dead_code)] // shared file: the unit tests use part of it
pub(crate) mod prereq;
