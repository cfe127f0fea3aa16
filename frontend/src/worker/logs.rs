//! What a worker logs of a connection when it ends: the access line
//! (`log.access`) and a failure's line, rate-limited so that a flood of bad
//! handshakes cannot make the log the bottleneck.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Conn;
use crate::relay::Failure;

/// Failure lines a worker logs per second; beyond that they are counted
/// and summed up once a second, so that a flood of bad handshakes cannot
/// make the log the bottleneck.
const FAILURE_LINES_PER_SEC: u32 = 50;

/// Rate limit of failure lines.
pub(super) struct FailureLog {
    second: Instant,
    logged: u32,
    suppressed: u64,
}

impl FailureLog {
    pub(super) fn new(now: Instant) -> FailureLog {
        FailureLog {
            second: now,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Logs that `worker`'s connection from `peer` failed, unless this
    /// second's lines are used up (then it is counted, and the count is
    /// logged with the next line after the second).
    pub(super) fn log(
        &mut self,
        worker: usize,
        failure: Failure,
        peer: SocketAddr,
        upstream: Option<String>,
        reason: &str,
    ) {
        let now = Instant::now();
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                info!(
                    worker,
                    "{} more failed connections in the last second were not logged (rate limit)",
                    self.suppressed
                );
            }
            self.second = now;
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged >= FAILURE_LINES_PER_SEC {
            self.suppressed += 1;
            return;
        }
        self.logged += 1;
        match failure {
            Failure::Handshake | Failure::HandshakeTimeout => {
                info!(worker, %peer, "handshake failed: {reason}")
            }
            Failure::Upstream => {
                let upstream = upstream.as_deref().unwrap_or("-");
                warn!(worker, %peer, "upstream {upstream}: {reason}; closing the client")
            }
            Failure::Idle | Failure::Client | Failure::Drain | Failure::ProxyHeader => {
                info!(worker, %peer, "connection closed: {reason}")
            }
        }
    }
}

/// The access line of `worker`'s connection `conn` (target
/// `tlsfront::access`, one per connection when `log.access = 1`).
pub(super) fn access(worker: usize, conn: &Conn) {
    let m = &conn.machine;
    let alpn = m.alpn_protocol().map(String::from_utf8_lossy);
    let (bytes_in, bytes_out) = m.bytes();
    info!(
        target: "tlsfront::access",
        client = %conn.client_addr(),
        sni = m.server_name().unwrap_or("-"),
        alpn = alpn.as_deref().unwrap_or("-"),
        version = tls_version(m.protocol_version()),
        resumed = m.resumption().name(),
        client_cert = m.client_cert(),
        bytes_in,
        bytes_out,
        ms = m.started().elapsed().as_millis() as u64,
        worker,
        "access"
    );
}

fn tls_version(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "-",
    }
}
