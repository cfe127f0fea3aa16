//! Loopback ports a test holds for as long as it needs them: one reserved
//! for a server it starts ([`ReservedPort`]), one that refuses connections
//! ([`RefusingPort`]).

use std::io;
use std::net::SocketAddr;

/// A TCP port on 127.0.0.1 held for as long as this value lives, so that
/// the server a test starts on it cannot lose it to another test.
///
/// It is a socket bound to 127.0.0.1:0 with SO_REUSEADDR and SO_REUSEPORT
/// that never listens. While it exists the kernel gives the port to no one
/// else: `bind(:0)` and the source ports of `connect` skip a port that has
/// a bound socket. A server that binds the port itself with SO_REUSEADDR
/// (tlsfront's listeners and metrics endpoint, nginx, redis) still can, as
/// the holder does not listen; it gets the connections, the holder none.
/// There is no window between choosing the port and the server's bind.
pub struct ReservedPort {
    _fd: std::os::fd::OwnedFd,
    pub port: u16,
    ip: std::net::IpAddr,
}

impl ReservedPort {
    /// Reserves a port the kernel picks.
    pub fn new() -> ReservedPort {
        Self::at(0).unwrap_or_else(|e| panic!("reserving a port on 127.0.0.1: {e}"))
    }

    /// Reserves `port` (0: any), or says why not (EADDRINUSE: someone else
    /// has it).
    pub fn at(port: u16) -> io::Result<ReservedPort> {
        let (fd, port) = bound_socket(port, true)?;
        Ok(ReservedPort {
            _fd: fd,
            port,
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
        })
    }

    /// Reserves a port on `[::1]` the same way (an IPv6-only socket): for
    /// an IPv6 listener of a test's tlsfront.
    pub fn new_v6() -> ReservedPort {
        let reserve = || -> io::Result<ReservedPort> {
            use socket2::{Domain, Socket, Type};
            let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_only_v6(true)?;
            let loopback = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
            socket.bind(&loopback.into())?;
            let port = socket
                .local_addr()?
                .as_socket()
                .map(|a| a.port())
                .ok_or_else(|| io::Error::other("not an IP socket"))?;
            Ok(ReservedPort {
                _fd: socket.into(),
                port,
                ip: std::net::Ipv6Addr::LOCALHOST.into(),
            })
        };
        reserve().unwrap_or_else(|e| panic!("reserving a port on [::1] (IPv6 loopback): {e}"))
    }

    /// `IP:PORT` (`127.0.0.1`, or `[::1]` for [`new_v6`](Self::new_v6)).
    pub fn addr_string(&self) -> String {
        self.addr().to_string()
    }

    /// `IP:PORT` (`127.0.0.1`, or `[::1]` for [`new_v6`](Self::new_v6)).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        ReservedPort::new()
    }
}

/// A TCP socket bound to 127.0.0.1:`port` that does not listen (`reuse`:
/// with SO_REUSEADDR and SO_REUSEPORT), and the port it got.
fn bound_socket(port: u16, reuse: bool) -> io::Result<(std::os::fd::OwnedFd, u16)> {
    use std::os::fd::FromRawFd;
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: plain socket calls on a descriptor we own; every result is checked.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        if reuse {
            let one: libc::c_int = 1;
            for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
                check(libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                ))?;
            }
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        sa.sin_port = port.to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        check(libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            len,
        ))?;
        let mut out: libc::sockaddr_in = std::mem::zeroed();
        let mut olen = len;
        check(libc::getsockname(
            fd,
            &mut out as *mut _ as *mut libc::sockaddr,
            &mut olen,
        ))?;
        Ok((owned, u16::from_be(out.sin_port)))
    }
}

/// A loopback port that refuses connections for as long as this value lives: a TCP
/// socket bound to 127.0.0.1:0 that never listens (so no other test can take the
/// port, and a connect gets RST / ECONNREFUSED).
pub struct RefusingPort {
    _fd: std::os::fd::OwnedFd,
    pub port: u16,
}

impl RefusingPort {
    pub fn new() -> RefusingPort {
        let (fd, port) = bound_socket(0, false)
            .unwrap_or_else(|e| panic!("binding a socket to 127.0.0.1:0: {e}"));
        RefusingPort { _fd: fd, port }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Default for RefusingPort {
    fn default() -> Self {
        RefusingPort::new()
    }
}
