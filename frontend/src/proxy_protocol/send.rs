//! The header tlsfront sends the upstream first (`upstream.proxy_protocol`),
//! so that it learns the client's address.

use std::net::SocketAddr;

/// The PROXY protocol header (v1 text or v2 binary) that tells the
/// upstream the client's address: `src` is the client, `dst` the address it
/// connected to. A v1 header with mixed address families says `UNKNOWN`.
pub fn proxy_protocol_header(version: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    match version {
        1 => {
            let line = match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => format!(
                    "PROXY TCP4 {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                ),
                (SocketAddr::V6(s), SocketAddr::V6(d)) => format!(
                    "PROXY TCP6 {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                ),
                _ => "PROXY UNKNOWN\r\n".to_string(),
            };
            line.into_bytes()
        }
        _ => {
            // Signature, version 2 + PROXY command, then family/transport.
            let mut h = super::V2_SIGNATURE.to_vec();
            h.push(0x21);
            match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    h.push(0x11);
                    h.extend_from_slice(&12u16.to_be_bytes());
                    h.extend_from_slice(&s.ip().octets());
                    h.extend_from_slice(&d.ip().octets());
                    h.extend_from_slice(&s.port().to_be_bytes());
                    h.extend_from_slice(&d.port().to_be_bytes());
                }
                (s, d) => {
                    let v6 = |a: SocketAddr| match a {
                        SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
                        SocketAddr::V6(v6) => *v6.ip(),
                    };
                    h.push(0x21);
                    h.extend_from_slice(&36u16.to_be_bytes());
                    h.extend_from_slice(&v6(s).octets());
                    h.extend_from_slice(&v6(d).octets());
                    h.extend_from_slice(&s.port().to_be_bytes());
                    h.extend_from_slice(&d.port().to_be_bytes());
                }
            }
            h
        }
    }
}
