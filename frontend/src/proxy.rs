//! The relay between a TLS client and a plaintext upstream, as a sans-IO
//! state machine.
//!
//! [`Relay`] does no I/O: the worker feeds it the bytes it read from either
//! socket and asks it what to write where. Every behaviour (handshake,
//! backpressure, half-close) can therefore be driven in memory, and the
//! worker's io_uring loop is the only code that touches sockets.
//!
//! Memory per connection is bounded by `proxy.buffer_size` (B) in each
//! direction: plaintext waiting for the upstream is at most B plus one read,
//! and TLS records waiting for the client at most B (rustls's buffer limit).

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use rustls::ServerConnection;

use crate::metrics::Resumption;

/// Why a connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The client sent something that is not acceptable TLS. rustls has
    /// queued the alert to send; flush [`Relay::client_output`] and close.
    #[error("TLS error: {0}")]
    Tls(#[from] rustls::Error),
    /// rustls's own buffer handling refused the bytes.
    #[error("TLS buffer: {0}")]
    Buffer(io::Error),
}

/// One proxied connection: rustls plus the plaintext on its way upstream.
pub struct Relay {
    tls: ServerConnection,
    to_upstream: Vec<u8>,
    limit: usize,
    client_done: bool,
    upstream_done: bool,
    early_bytes: u64,
    hint: Option<crate::metrics::ResumeHint>,
}

impl Relay {
    /// A relay over a fresh server connection; `limit` is
    /// `proxy.buffer_size`, the bytes buffered per direction.
    pub fn new(mut tls: ServerConnection, limit: usize) -> Relay {
        tls.set_buffer_limit(Some(limit));
        Relay {
            tls,
            to_upstream: Vec::new(),
            limit,
            client_done: false,
            upstream_done: false,
            early_bytes: 0,
            hint: None,
        }
    }

    /// The rustls connection (negotiated version, ALPN, SNI...).
    pub fn tls(&self) -> &ServerConnection {
        &self.tls
    }

    /// Bytes of 0-RTT early data accepted on this connection.
    pub fn early_data_bytes(&self) -> u64 {
        self.early_bytes
    }

    /// How the completed handshake got its session.
    pub fn resumption(&self) -> Resumption {
        use crate::metrics::ResumeHint;
        if self.tls.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
            return Resumption::Full;
        }
        match (self.tls.protocol_version(), self.hint) {
            (Some(rustls::ProtocolVersion::TLSv1_3), Some(ResumeHint::CacheTake)) => {
                Resumption::Tls13Stateful
            }
            (Some(rustls::ProtocolVersion::TLSv1_3), _) => Resumption::Tls13Ticket,
            (_, Some(ResumeHint::TicketOpened)) => Resumption::Tls12Ticket,
            _ => Resumption::SessionId,
        }
    }

    /// Still handshaking: nothing is relayed yet.
    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// Feeds ciphertext read from the client.
    pub fn receive_from_client(&mut self, mut data: &[u8]) -> Result<(), RelayError> {
        while !data.is_empty() && !self.client_done {
            let n = self.tls.read_tls(&mut data).map_err(RelayError::Buffer)?;
            // rustls calls the session stores synchronously in here, on
            // this thread: what they note belongs to this connection.
            let _ = crate::metrics::take_resume_hint();
            let processed = self.tls.process_new_packets();
            if let Some(hint) = crate::metrics::take_resume_hint() {
                self.hint = Some(hint);
            }
            processed?;
            self.drain_plaintext()?;
            if n == 0 {
                // close_notify received: rustls reads nothing after it.
                break;
            }
        }
        Ok(())
    }

    /// The client's TCP stream ended (FIN). Whatever came before stays
    /// queued for the upstream.
    pub fn client_closed(&mut self) -> Result<(), RelayError> {
        if !self.client_done {
            // An empty read tells rustls the transport ended.
            self.tls
                .read_tls(&mut &[][..])
                .map_err(RelayError::Buffer)?;
            self.tls.process_new_packets()?;
            self.drain_plaintext()?;
            self.client_done = true;
        }
        Ok(())
    }

    fn drain_plaintext(&mut self) -> Result<(), RelayError> {
        let mut chunk = [0u8; 4096];
        // 0-RTT data: rustls hands it out only once it accepted it (a
        // resumed TLS 1.3 session whose single-use ticket this box had not
        // redeemed yet); it goes upstream first, in order.
        while let Some(mut early) = self.tls.early_data() {
            match early.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_upstream.extend_from_slice(&chunk[..n]);
                    self.early_bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(RelayError::Buffer(e)),
            }
        }
        loop {
            match self.tls.reader().read(&mut chunk) {
                Ok(0) => {
                    // close_notify: the client will send nothing more.
                    self.client_done = true;
                    return Ok(());
                }
                Ok(n) => self.to_upstream.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    // TCP FIN without close_notify. Most clients (curl
                    // among them) end this way; it is a half-close, not
                    // an error, for a byte-stream proxy.
                    self.client_done = true;
                    return Ok(());
                }
                Err(e) => return Err(RelayError::Buffer(e)),
            }
        }
    }

    /// Reading more from the client is allowed: it has not finished and the
    /// plaintext waiting for the upstream is under the limit.
    pub fn wants_client_read(&self) -> bool {
        !self.client_done && self.to_upstream.len() < self.limit
    }

    /// The client has finished sending (close_notify or FIN).
    pub fn client_done(&self) -> bool {
        self.client_done
    }

    /// Moves the plaintext waiting for the upstream into `out` (which must
    /// be empty); swapping keeps both buffers' capacity for reuse.
    pub fn take_upstream_bytes(&mut self, out: &mut Vec<u8>) {
        debug_assert!(out.is_empty());
        std::mem::swap(&mut self.to_upstream, out);
    }

    /// Plaintext from the upstream; returns how much was taken (0 when the
    /// buffer to the client is full: wait for the client to drain).
    pub fn send_to_client(&mut self, data: &[u8]) -> io::Result<usize> {
        self.tls.writer().write(data)
    }

    /// The upstream finished sending: queue close_notify for the client.
    pub fn upstream_closed(&mut self) {
        if !self.upstream_done {
            self.tls.send_close_notify();
            self.upstream_done = true;
        }
    }

    /// The upstream has finished sending.
    pub fn upstream_done(&self) -> bool {
        self.upstream_done
    }

    /// Appends the TLS bytes due to the client to `out`.
    pub fn client_output(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(out)?;
        }
        Ok(())
    }

    /// TLS bytes are waiting for the client.
    pub fn has_client_output(&self) -> bool {
        self.tls.wants_write()
    }
}

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
            let mut h = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
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

#[cfg(test)]
mod tests;
