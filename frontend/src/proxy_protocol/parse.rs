//! Reading the PROXY header a balancer sends before the client's first
//! byte: bounded (never more than [`MAX_HEADER`] bytes looked at), no
//! allocation, every field checked; fuzzed (`fuzz/fuzz_targets/proxy_header.rs`).
//!
//! v1 is one line `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` (or `PROXY
//! UNKNOWN…\r\n`) of at most 107 bytes; v2 is the 12-byte signature, a
//! version/command byte, a family byte, a 16-bit length and that many bytes
//! of addresses and TLVs (the TLVs are skipped).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::V2_SIGNATURE;

/// The longest v1 line, CRLF included (the specification's limit).
const MAX_V1: usize = 107;

/// The most bytes a header may take: a v2 header with 4 KiB of TLVs
/// (balancers send a few dozen bytes; the 16-bit length field would allow
/// 64 KiB, which a connection is not allowed to make tlsfront hold).
pub const MAX_HEADER: usize = 16 + 4096;

/// What a complete header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection is proxied: the client's address and the one it
    /// connected to.
    Proxied {
        /// The client.
        source: SocketAddr,
        /// The address the client connected to (the balancer's).
        destination: SocketAddr,
    },
    /// `UNKNOWN` (v1), `LOCAL` or an unsupported family (v2): the
    /// connection's own addresses stand.
    Local,
}

/// The outcome of [`parse`] on the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes.
    Complete {
        /// What it said.
        header: Header,
        /// Its length: the client's bytes start after it.
        len: usize,
    },
    /// So far a valid prefix: more bytes are needed (never past
    /// [`MAX_HEADER`]).
    Incomplete,
    /// Not a PROXY header, or a malformed one.
    Invalid(&'static str),
}

/// Reads the PROXY header at the start of `data`.
pub fn parse(data: &[u8]) -> Parsed {
    if data.is_empty() {
        return Parsed::Incomplete;
    }
    if data[0] == b'P' {
        return parse_v1(data);
    }
    if data[0] == V2_SIGNATURE[0] {
        return parse_v2(data);
    }
    Parsed::Invalid("no PROXY protocol signature")
}

fn parse_v1(data: &[u8]) -> Parsed {
    let prefix = b"PROXY ";
    let n = data.len().min(prefix.len());
    if data[..n] != prefix[..n] {
        return Parsed::Invalid("no PROXY protocol signature");
    }
    let window = &data[..data.len().min(MAX_V1)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if data.len() >= MAX_V1 {
            return Parsed::Invalid("v1 line longer than 107 bytes or without CRLF");
        }
        if window.contains(&b'\n') {
            return Parsed::Invalid("v1 line ends without CR");
        }
        return Parsed::Incomplete;
    };
    let len = end + 2;
    if data[..end].iter().any(|&b| b == b'\n' || b == b'\r') {
        return Parsed::Invalid("v1 line has a CR or LF before its end");
    }
    let Ok(line) = std::str::from_utf8(&data[prefix.len()..end]) else {
        return Parsed::Invalid("v1 line is not text");
    };
    let mut fields = line.split(' ');
    let header = match fields.next() {
        Some("UNKNOWN") => Header::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut next = || fields.next();
            let (Some(src), Some(dst), Some(sport), Some(dport), None) =
                (next(), next(), next(), next(), next())
            else {
                return Parsed::Invalid("v1 TCP line needs exactly four fields");
            };
            let ip = |s: &str| -> Option<IpAddr> {
                if family == "TCP4" {
                    s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                } else {
                    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                }
            };
            // Ports are decimal without sign or leading zeros.
            let port = |s: &str| -> Option<u16> {
                let canonical = !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s == "0" || !s.starts_with('0'));
                canonical.then(|| s.parse().ok()).flatten()
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(s), Some(d), Some(sp), Some(dp)) => Header::Proxied {
                    source: SocketAddr::new(s, sp),
                    destination: SocketAddr::new(d, dp),
                },
                _ => return Parsed::Invalid("v1 address or port malformed"),
            }
        }
        _ => return Parsed::Invalid("v1 protocol is not TCP4, TCP6 or UNKNOWN"),
    };
    Parsed::Complete { header, len }
}

fn parse_v2(data: &[u8]) -> Parsed {
    let n = data.len().min(V2_SIGNATURE.len());
    if data[..n] != V2_SIGNATURE[..n] {
        return Parsed::Invalid("no PROXY protocol signature");
    }
    if data.len() < 16 {
        return Parsed::Incomplete;
    }
    let (version, command) = (data[12] >> 4, data[12] & 0x0f);
    if version != 2 {
        return Parsed::Invalid("v2 header of another version");
    }
    let body = usize::from(u16::from_be_bytes([data[14], data[15]]));
    let len = 16 + body;
    if len > MAX_HEADER {
        return Parsed::Invalid("v2 header longer than tlsfront accepts (4 KiB of TLVs)");
    }
    if data.len() < len {
        return Parsed::Incomplete;
    }
    let body = &data[16..len];
    let header = match command {
        0 => Header::Local,
        1 => match data[13] {
            // TCP over IPv4, TCP over IPv6.
            0x11 => {
                let Some(a) = body.get(..12) else {
                    return Parsed::Invalid("v2 IPv4 addresses truncated");
                };
                let ip = |i: usize| Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]);
                let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                    destination: SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
                }
            }
            0x21 => {
                let Some(a) = body.get(..36) else {
                    return Parsed::Invalid("v2 IPv6 addresses truncated");
                };
                let ip = |i: usize| {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&a[i..i + 16]);
                    Ipv6Addr::from(o)
                };
                let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
                    destination: SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
                }
            }
            // UNSPEC, UDP, unix sockets: the specification has the
            // receiver use the connection's own addresses.
            _ => Header::Local,
        },
        _ => return Parsed::Invalid("v2 command is neither LOCAL nor PROXY"),
    };
    Parsed::Complete { header, len }
}
