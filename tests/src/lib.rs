//! tlsfront-tests: the harness of the end-to-end suite.
//!
//! Everything here drives real processes and real sockets on loopback:
//! - [`Frontend`] starts `tlsfront run` on its own port and control socket,
//!   waits for `tlsfront: ready`, keeps its output, and kills it on drop.
//! - [`Upstream`] is a TCP server on 127.0.0.1:0 with one thread per
//!   connection ([`Upstream::echo`], or any handler).
//! - [`TlsClient`] is a rustls client over a `TcpStream`, with [`TlsClient::pump`]
//!   sending and receiving at the same time (non-blocking socket + poll), so
//!   large transfers cannot deadlock on full buffers.
//! - [`Pki`] makes a test CA and leaf certificates with rcgen.
//! - [`Pattern`] is a deterministic byte stream; [`Fnv`] a small digest.
//!
//! Every wait is bounded: nothing here can hang a test run.
//!
//! Each concern is a module of its own; the crate root re-exports what the
//! test files use, so they import `tlsfront_tests::{Frontend, Pki, ...}`.

pub use rustls;
pub use rustls::pki_types::CertificateDer;
pub use tempfile::TempDir;

pub mod cache_value;
pub mod clients;
pub mod control;
pub mod cpus;
pub mod data;
pub mod files;
pub mod fleet;
pub mod haproxy;
pub mod lifecycle;
pub mod load;
pub mod logs;
pub mod netns;
pub mod nginx;
pub mod openssl_client;
pub mod openssl_pki;
pub mod pki;
pub mod ports;
pub mod pp2;
pub mod prereq;
pub mod process;
pub mod process_status;
pub mod prometheus;
pub mod raw_tls;
pub mod redis;
pub mod resp;
pub mod sessions;
pub mod sockets;
pub mod stats;
pub mod streaming;
pub mod upstreams;

pub use clients::{
    client_config, https_get, is_http_200, pattern_source, read_until_closed,
    resuming_client_config, visit, ClientSpec, End, PumpOpts, PumpResult, TlsClient, Trust,
    Versions, Visit, IO_TIMEOUT,
};
pub use cpus::{incoming_cpu, parse_cpu_list, worker_cpus_of};
pub use data::{Fnv, Pattern, PatternCheck};
pub use files::{temp_dir, write_file};
pub use pki::{Leaf, Pki, SniLeaves};
pub use ports::{RefusingPort, ReservedPort};
pub use process::{
    bin, parse_sysctl, run_cmd, run_command, tail, tlsfront_cmd, wait_until, Captured,
    CapturesOutput, CmdOutput, Frontend, RunCommand, CLI_TIMEOUT, READY_TIMEOUT,
};
pub use stats::{single_worker, worker_diff, Counters, Stats};
pub use upstreams::Upstream;

#[cfg(test)]
mod self_tests;
