//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, v1 text and v2
//! binary): the header tlsfront reads first from a trusted L4 balancer in
//! front of it (`net.proxy_protocol`, [`parse`](mod@parse)), and the one it sends the
//! upstream (`upstream.proxy_protocol`, [`send`](mod@send)), each naming the client's
//! address.

pub mod parse;
pub mod send;

pub use parse::{parse, Header, Parsed, MAX_HEADER};
pub use send::{openssl_cipher_name, proxy_protocol_header, proxy_protocol_v2_with_tls, TlsFacts};

/// The 12 bytes a v2 header starts with.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\x00\r\nQUIT\n";

#[cfg(test)]
mod tests;
