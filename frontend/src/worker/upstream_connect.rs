//! Connecting a connection to its upstream: the next server of its pool
//! it has not tried, one io_uring connect, and the retry on the next
//! server after a failed one.

use std::io;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::Instant;

use socket2::{Protocol, Socket, Type};

use super::{tag, Conn, Op};
use crate::config::UpstreamServer;
use crate::live::Live;
use crate::metrics::WorkerStats;
use crate::uring::{BufPool, Driver, UringError};

/// Which connection (slot, generation) a connect attempt is for, and when.
#[derive(Clone, Copy)]
pub(super) struct Attempt {
    pub(super) slot: u32,
    pub(super) generation: u32,
    pub(super) now: Instant,
}

/// Starts the connect of the next upstream server this connection has not
/// tried ([`crate::upstream_pool::Pool::pick`]), or, when none is left, tells the connection it
/// failed with `last` (the previous attempt's error).
pub(super) fn connect_next(
    conn: &mut Conn,
    driver: &mut Driver,
    live: &Live,
    at: Attempt,
    bufs: &mut BufPool,
    counters: &WorkerStats,
    last: Option<io::Error>,
) -> Result<(), UringError> {
    let Attempt {
        slot,
        generation,
        now,
    } = at;
    let pool = Arc::clone(
        conn.pool
            .get_or_insert_with(|| Arc::clone(live.pools().for_name(conn.machine.server_name()))),
    );
    // A new attempt must not share its connect op with the cancelled one
    // still completing (they are told apart by parity).
    let clash = conn
        .abandoned
        .is_some_and(|(_, attempt)| attempt % 2 == (conn.attempts + 1) % 2);
    let next = if clash {
        None
    } else {
        pool.pick(now, conn.tried)
    };
    let Some(i) = next else {
        let e = last.unwrap_or_else(|| io::Error::other("no upstream server left to try"));
        conn.machine.upstream_connected(now, Err(e), bufs);
        return Ok(());
    };
    if i < 64 {
        conn.tried |= 1 << i;
    }
    if last.is_some() {
        WorkerStats::inc(&counters.upstream_retries);
    }
    let (server, addr) = pool.server(i);
    let opened = Socket::new(
        addr.domain(),
        Type::STREAM.nonblocking().cloexec(),
        matches!(server, UpstreamServer::Tcp(_)).then_some(Protocol::TCP),
    )
    .and_then(|socket| {
        if matches!(server, UpstreamServer::Tcp(_)) {
            socket.set_nodelay(true)?;
        }
        Ok(socket)
    });
    match opened {
        Ok(socket) => {
            let fd = socket.into_raw_fd();
            conn.server = i;
            conn.upstream = Some(fd);
            conn.connecting = true;
            conn.attempts += 1;
            let op = if conn.attempts % 2 == 1 {
                Op::Connect
            } else {
                Op::ConnectRetry
            };
            conn.machine.connect_started(now);
            conn.ops += 1;
            driver.connect(fd, addr.clone(), tag(slot, generation, op))
        }
        // Out of descriptors, or similar: not the server's fault.
        Err(e) => {
            conn.machine.upstream_connected(now, Err(e), bufs);
            Ok(())
        }
    }
}
