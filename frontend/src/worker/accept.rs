//! Accepting on a worker: the multishot accept of each listener and what a
//! new connection gets (limits, a trusted PROXY header or none, its slot).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::server::UnbufferedServerConnection;
use tracing::{debug, warn};

use super::op_tag::{tag, untag, Op};
use super::{sockaddr, Conn, Slot, Worker};
use crate::metrics::WorkerStats;
use crate::relay::{Connection, HelloGate, Limits};
use crate::uring::{Completion, UringError};

impl Worker {
    /// Arms the multishot accept of listener `listener`.
    pub(super) fn arm_accept(&mut self, listener: usize) -> Result<(), UringError> {
        let fd = self.listeners[listener].as_raw_fd();
        self.accepting[listener] = true;
        // Listener indexes are below the address count of a config line.
        let slot = u32::try_from(listener).unwrap_or(u32::MAX);
        self.driver.accept_multi(fd, tag(slot, 0, Op::Accept))
    }

    pub(super) fn accepted(&mut self, now: Instant, c: Completion) -> Result<(), UringError> {
        let listener = untag(c.tag).0 as usize;
        if listener >= self.listeners.len() {
            return Ok(());
        }
        if !c.more {
            self.accepting[listener] = false;
        }
        if c.result < 0 {
            let e = io::Error::from_raw_os_error(-c.result);
            if self.live.draining() {
                // SIGTERM shut the listening socket down.
                return Ok(());
            }
            warn!(worker = self.index, "accept failed: {e}");
            if !self.accepting[listener] {
                // Out of descriptors or memory: trying again at once would
                // spin; open connections are served meanwhile.
                let pause = if matches!(
                    c.result.abs(),
                    libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
                ) {
                    Duration::from_millis(100)
                } else {
                    Duration::from_millis(10)
                };
                self.accept_again_at = Some(now + pause);
            }
            return Ok(());
        }
        if !self.accepting[listener] && !self.live.draining() {
            self.arm_accept(listener)?;
        }
        let fd = c.result;
        WorkerStats::inc(&self.counters().accepted);
        let config = self.live.config();
        let max = config.max_connections;
        if max > 0 && self.active >= max as usize {
            // Over the limit: close at once (the client sees a reset)
            // rather than let memory grow.
            WorkerStats::inc(&self.counters().rejected_over_limit);
            debug!(
                worker = self.index,
                "limits.max_connections reached: closed"
            );
            return self.driver.close(fd, tag(0, 0, Op::Housekeeping));
        }
        let peer = peer_addr(fd);
        if config.proxy_in && peer.is_none() {
            // Reset before it was looked at (getpeername: ENOTCONN), as a
            // balancer does when its own client aborts: gone, not a
            // stranger, so not counted as one.
            debug!(
                worker = self.index,
                "reset before its peer was read: closed"
            );
            return self.driver.close(fd, tag(0, 0, Op::Housekeeping));
        }
        let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        if config.proxy_in && !config.proxy_trusted.contains(peer.ip()) {
            // Only a trusted balancer may say who the client is.
            WorkerStats::inc(&self.counters().proxy_untrusted);
            debug!(worker = self.index, %peer, "not in net.proxy_protocol.trusted: closed");
            return self.driver.close(fd, tag(0, 0, Op::Housekeeping));
        }
        let tls = match UnbufferedServerConnection::new(self.live.tls()) {
            Ok(tls) => tls,
            Err(e) => {
                warn!(worker = self.index, %peer, "cannot create TLS session: {e}");
                return self.driver.close(fd, tag(0, 0, Op::Housekeeping));
            }
        };

        let limits = Limits {
            handshake: config.handshake_timeout.0,
            idle: config.idle_timeout.0,
            connect: config.connect_timeout.0,
            buffer: usize::try_from(config.buffer_size.0).unwrap_or(usize::MAX),
        };
        let mut machine = Connection::new(tls, limits, None, now);
        if config.proxy_protocol.0 > 0 {
            let local = local_addr(fd).unwrap_or(config.listen.first());
            machine = machine.with_proxy_out(config.proxy_protocol.0, peer, local);
        }
        if config.proxy_in {
            machine = machine.with_proxy_in();
        }
        if let Some(gate) = &self.gate {
            machine = machine.with_gate(Arc::clone(gate) as Arc<dyn HelloGate>);
        }
        let conn = Conn {
            machine,
            client: fd,
            upstream: None,
            peer,
            client_recv: false,
            upstream_recv: false,
            connecting: false,
            timer: None,
            touched: false,
            log_access: config.log_access,
            counted: (0, 0),
            pool: None,
            server: 0,
            tried: 0,
            attempts: 0,
            abandoned: None,
            ops: 0,
            closing: false,
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[slot as usize].conn = Some(conn);
        self.active += 1;
        WorkerStats::inc(&self.counters().active);
        self.touch(slot);
        Ok(())
    }
}

/// The client's address.
fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    sockaddr(nix::sys::socket::getpeername(fd).ok()?)
}

/// The address the client connected to (for the PROXY header).
fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    sockaddr(nix::sys::socket::getsockname(fd).ok()?)
}
