//! The workers' listening sockets and CPUs: one SO_REUSEPORT socket per
//! worker for each `net.listen` address, and the CPU each worker is pinned
//! to. Made before the workers start, because the steering programs need
//! the sockets and the CPUs too.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use super::WorkerError;

/// For each address of `addrs`, one listening socket per worker, all bound
/// with SO_REUSEPORT so that the kernel spreads that address's connections
/// over the workers: `result[address][worker]`.
pub(crate) fn bind_listeners(
    addrs: &[SocketAddr],
    count: usize,
    backlog: u32,
) -> Result<Vec<Vec<std::net::TcpListener>>, WorkerError> {
    addrs
        .iter()
        .map(|&addr| bind_group(addr, count, backlog))
        .collect()
}

/// `count` listening sockets bound to `addr`, one per worker.
fn bind_group(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> Result<Vec<std::net::TcpListener>, WorkerError> {
    let err = |what: &'static str| move |source| WorkerError::Listen { addr, what, source };
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(err("socket"))?;
        socket
            .set_reuse_address(true)
            .map_err(err("SO_REUSEADDR"))?;
        socket.set_reuse_port(true).map_err(err("SO_REUSEPORT"))?;
        // Accepted sockets inherit TCP_NODELAY (handshake flights are small
        // writes that Nagle would delay): one setsockopt per listener
        // instead of one per connection.
        socket.set_nodelay(true).map_err(err("TCP_NODELAY"))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true).map_err(err("IPV6_V6ONLY"))?;
        }
        socket.bind(&addr.into()).map_err(err("bind"))?;
        socket
            .listen(i32::try_from(backlog).unwrap_or(i32::MAX))
            .map_err(err("listen"))?;
        listeners.push(socket.into());
    }
    Ok(listeners)
}

/// The CPU each worker is pinned to (`None`: not pinned), worker n on the
/// n-th CPU this process may run on.
pub(crate) fn plan_cpus(count: usize, pin: bool) -> Vec<Option<usize>> {
    let cores = if pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    (0..count)
        .map(|i| (!cores.is_empty()).then(|| cores[i % cores.len()].id))
        .collect()
}
