//! The rustls client of the tests: configs ([`ClientSpec`], [`client_config`],
//! [`resuming_client_config`]), a connection that sends and receives at
//! once ([`TlsClient::pump`]), and one-shot visits ([`visit`], [`https_get`]).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;

use crate::cpus::incoming_cpu;
use crate::data::{Pattern, PatternCheck};

/// Default bound for connects, handshakes and small exchanges.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Which certificates the client accepts.
#[derive(Clone)]
pub enum Trust {
    /// Verify the chain against these roots and the server name.
    Roots(Vec<CertificateDer<'static>>),
    /// Accept any certificate (signatures are still checked); for tests that look at
    /// which certificate was served rather than whether it verifies.
    AnyCert,
}

/// TLS versions the client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    Both,
    Tls12,
    Tls13,
}

/// How to build a client config.
#[derive(Clone)]
pub struct ClientSpec {
    pub trust: Trust,
    pub alpn: Vec<String>,
    pub versions: Versions,
}

impl ClientSpec {
    pub fn new(trust: Trust) -> ClientSpec {
        ClientSpec {
            trust,
            alpn: Vec::new(),
            versions: Versions::Both,
        }
    }
    pub fn alpn(mut self, protos: &[&str]) -> Self {
        self.alpn = protos.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn versions(mut self, v: Versions) -> Self {
        self.versions = v;
        self
    }
    pub fn build(&self) -> Arc<rustls::ClientConfig> {
        client_config(self)
    }
}

/// The crypto provider of every client (and of the self-tests' server).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client config (aws-lc-rs provider) for `spec`.
pub fn client_config(spec: &ClientSpec) -> Arc<rustls::ClientConfig> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match spec.versions {
        Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Tls12 => &[&rustls::version::TLS12],
        Versions::Tls13 => &[&rustls::version::TLS13],
    };
    let p = provider();
    let builder = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(versions)
        .expect("protocol versions");
    let mut cfg = match &spec.trust {
        Trust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for r in roots {
                store.add(r.clone()).expect("add root");
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        Trust::AnyCert => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(p)))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = spec.alpn.iter().map(|s| s.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// How a [`TlsClient::pump`] ended on the receive side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Received the requested number of bytes (the connection is still open).
    Count,
    /// The server sent close_notify (clean end of stream).
    CloseNotify,
    /// TCP EOF without close_notify.
    TcpEof,
    /// A socket or TLS error.
    Error(String),
    /// The deadline passed first.
    Timeout,
}

/// What a [`TlsClient::pump`] did.
#[derive(Debug, Clone)]
pub struct PumpResult {
    pub sent: u64,
    pub received: u64,
    pub end: End,
    pub elapsed: Duration,
}

/// What [`TlsClient::pump`] should do.
pub struct PumpOpts {
    /// Send `close_notify` once the source is exhausted.
    pub close_notify_after_send: bool,
    /// Also `shutdown(Write)` the TCP socket after close_notify has been flushed.
    pub tcp_shutdown_after_close_notify: bool,
    /// Stop once this many bytes have been received (None: until EOF/close).
    pub recv_until: Option<u64>,
    pub timeout: Duration,
}

/// A client TLS connection (rustls over a blocking `TcpStream`).
pub struct TlsClient {
    pub conn: rustls::ClientConnection,
    pub sock: TcpStream,
}

impl TlsClient {
    /// Connects to `addr`, sends `server_name` as SNI (if it is a DNS name) and
    /// completes the handshake within [`IO_TIMEOUT`].
    pub fn connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<TlsClient> {
        let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        Self::handshake_over(sock, config, server_name)
    }

    /// Completes a TLS handshake over an already connected socket (e.g. one
    /// the server's kernel queued while the server could not accept), within
    /// [`IO_TIMEOUT`].
    pub fn handshake_over(
        sock: TcpStream,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<TlsClient> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut c = TlsClient { conn, sock };
        let deadline = Instant::now() + IO_TIMEOUT;
        while c.conn.is_handshaking() {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake timed out",
                ));
            }
            let (rd, wr) = c.conn.complete_io(&mut c.sock)?;
            if rd == 0 && wr == 0 && c.conn.is_handshaking() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF during handshake",
                ));
            }
        }
        // Flush our Finished (TLS 1.3) so the server counts the handshake.
        while c.conn.wants_write() {
            c.conn.write_tls(&mut c.sock)?;
        }
        Ok(c)
    }

    /// The kernel's `SO_INCOMING_CPU` of this client's socket: the CPU that
    /// processed the last segment it received. On loopback (and a veth
    /// pair) a segment is processed on the CPU that sent it, so for a
    /// server whose workers are pinned one per CPU this names the CPU of
    /// the worker that served the connection, as the kernel saw it.
    pub fn incoming_cpu(&self) -> io::Result<u32> {
        incoming_cpu(&self.sock)
    }

    /// The DER of the certificate the server presented.
    pub fn leaf_der(&self) -> Option<CertificateDer<'static>> {
        self.conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
    }

    /// The negotiated ALPN protocol, as text.
    pub fn alpn(&self) -> Option<String> {
        self.conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Sends the bytes produced by `source` (it fills the buffer and returns how many
    /// bytes it wrote, 0 when done) while passing every received plaintext byte to
    /// `sink`, both at once, on a non-blocking socket. Ends when everything is sent
    /// (and close_notify, if asked) and the receive side is done (count reached, or
    /// close_notify/EOF/error), or at the deadline.
    pub fn pump(
        &mut self,
        source: &mut dyn FnMut(&mut [u8]) -> usize,
        sink: &mut dyn FnMut(&[u8]),
        opts: &PumpOpts,
    ) -> PumpResult {
        let start = Instant::now();
        let deadline = start + opts.timeout;
        let mut res = PumpResult {
            sent: 0,
            received: 0,
            end: End::Timeout,
            elapsed: Duration::ZERO,
        };
        if let Err(e) = self.sock.set_nonblocking(true) {
            res.end = End::Error(format!("set_nonblocking: {e}"));
            return res;
        }
        self.conn.set_buffer_limit(Some(256 * 1024));
        let mut out = vec![0u8; 64 * 1024];
        let (mut out_pos, mut out_len) = (0usize, 0usize);
        let mut inbuf = vec![0u8; 64 * 1024];
        let mut send_done = false;
        let mut close_sent = false;
        let mut tcp_shut = false;
        let mut recv_end: Option<End> = None;
        let mut peer_eof = false;

        let result = loop {
            // 1. Move plaintext into rustls as far as its buffer allows.
            while !send_done {
                if out_pos == out_len {
                    out_len = source(&mut out);
                    out_pos = 0;
                    if out_len == 0 {
                        send_done = true;
                        break;
                    }
                }
                match self.conn.writer().write(&out[out_pos..out_len]) {
                    Ok(0) => break,
                    Ok(n) => {
                        out_pos += n;
                        res.sent += n as u64;
                    }
                    Err(e) => break_err(&mut recv_end, format!("rustls write: {e}")),
                }
                if recv_end.is_some() {
                    break;
                }
            }
            if send_done && opts.close_notify_after_send && !close_sent {
                self.conn.send_close_notify();
                close_sent = true;
            }

            // 2. Flush TLS records to the socket.
            let mut write_err = None;
            while self.conn.wants_write() {
                match self.conn.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        write_err = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = write_err {
                // The peer is gone. Report what the receive side saw first, if anything.
                break recv_end
                    .clone()
                    .unwrap_or(End::Error(format!("socket write: {e}")));
            }
            if close_sent
                && opts.tcp_shutdown_after_close_notify
                && !tcp_shut
                && !self.conn.wants_write()
            {
                let _ = self.sock.shutdown(Shutdown::Write);
                tcp_shut = true;
            }

            let all_sent = send_done
                && (!opts.close_notify_after_send || close_sent)
                && !self.conn.wants_write();
            if let Some(end) = &recv_end {
                if matches!(end, End::Error(_)) || all_sent || peer_eof {
                    break end.clone();
                }
            }
            if Instant::now() >= deadline {
                break End::Timeout;
            }

            // 3. Wait for the socket.
            let mut events = 0;
            if recv_end.is_none() && !peer_eof {
                events |= libc::POLLIN;
            }
            if self.conn.wants_write() {
                events |= libc::POLLOUT;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_millis().clamp(1, 100) as i32;
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break End::Error(format!("poll: {e}"));
            }

            // 4. Read TLS records and drain plaintext.
            if recv_end.is_none() && !peer_eof && pfd.revents != 0 {
                match self.conn.read_tls(&mut self.sock) {
                    Ok(0) => peer_eof = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        recv_end = Some(End::Error(format!("socket read: {e}")));
                        continue;
                    }
                }
                if let Err(e) = self.conn.process_new_packets() {
                    // Try to send the alert, then report.
                    let _ = self.conn.write_tls(&mut self.sock);
                    recv_end = Some(End::Error(format!("TLS: {e}")));
                    continue;
                }
            }
            if recv_end.is_none() {
                loop {
                    if let Some(limit) = opts.recv_until {
                        if res.received >= limit {
                            recv_end = Some(End::Count);
                            break;
                        }
                    }
                    let want = match opts.recv_until {
                        Some(limit) => ((limit - res.received) as usize).min(inbuf.len()),
                        None => inbuf.len(),
                    };
                    match self.conn.reader().read(&mut inbuf[..want]) {
                        Ok(0) => {
                            recv_end = Some(End::CloseNotify);
                            break;
                        }
                        Ok(n) => {
                            res.received += n as u64;
                            sink(&inbuf[..n]);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if peer_eof {
                                // EOF from TCP with nothing more buffered and no close_notify
                                recv_end = Some(End::TcpEof);
                            }
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            recv_end = Some(End::TcpEof);
                            break;
                        }
                        Err(e) => {
                            recv_end = Some(End::Error(format!("rustls read: {e}")));
                            break;
                        }
                    }
                }
            }
        };
        let _ = self.sock.set_nonblocking(false);
        res.end = result;
        res.elapsed = start.elapsed();
        res
    }

    /// Sends `request`, then reads until the server ends the stream (at most
    /// `timeout`). Returns what arrived and how it ended.
    pub fn request(&mut self, request: &[u8], timeout: Duration) -> (Vec<u8>, End) {
        let mut req = Some(request.to_vec());
        let mut source = |buf: &mut [u8]| -> usize {
            match req.take() {
                Some(r) => {
                    assert!(r.len() <= buf.len(), "request too large for one chunk");
                    buf[..r.len()].copy_from_slice(&r);
                    r.len()
                }
                None => 0,
            }
        };
        let mut got = Vec::new();
        let mut sink = |d: &[u8]| got.extend_from_slice(d);
        let r = self.pump(
            &mut source,
            &mut sink,
            &PumpOpts {
                close_notify_after_send: false,
                tcp_shutdown_after_close_notify: false,
                recv_until: None,
                timeout,
            },
        );
        (got, r.end)
    }
}

fn break_err(slot: &mut Option<End>, msg: String) {
    if slot.is_none() {
        *slot = Some(End::Error(msg));
    }
}

/// Source for [`TlsClient::pump`]: `len` bytes of the pattern of `seed`.
pub fn pattern_source(seed: u64, len: u64) -> impl FnMut(&mut [u8]) -> usize {
    let mut p = Pattern::new(seed);
    let mut left = len;
    move |buf: &mut [u8]| {
        let n = (buf.len() as u64).min(left) as usize;
        p.fill(&mut buf[..n]);
        left -= n as u64;
        n
    }
}

/// An HTTP/1.0 GET through a fresh TLS connection; returns the response bytes and
/// how the stream ended.
pub fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> io::Result<(Vec<u8>, End)> {
    let mut c = TlsClient::connect(addr, config, server_name)?;
    Ok(c.request(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", IO_TIMEOUT))
}

/// A client config like [`client_config`] whose sessions (TLS 1.2 session IDs,
/// TLS 1.3 tickets) are kept across connections in its own
/// `ClientSessionMemoryCache`: every connection made with it (or a clone of the
/// `Arc`) offers the last session it got from a server of that name. Build a
/// new one for a client that remembers nothing.
pub fn resuming_client_config(spec: &ClientSpec) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*client_config(spec)).clone();
    cfg.resumption = rustls::client::Resumption::store(Arc::new(
        rustls::client::ClientSessionMemoryCache::new(64),
    ));
    Arc::new(cfg)
}

impl TlsClient {
    /// Did the handshake resume a session (TLS 1.2 session ID or TLS 1.3 PSK)?
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }
}

/// What one [`visit`] saw.
#[derive(Debug, Clone)]
pub struct Visit {
    /// The handshake resumed a session.
    pub resumed: bool,
    pub version: Option<rustls::ProtocolVersion>,
    /// The response started with an HTTP 200 status line.
    pub http_200: bool,
    pub end: End,
    /// `SO_INCOMING_CPU` of the client's socket once the handshake is done:
    /// the CPU of the worker that served it, as the kernel saw it
    /// ([`TlsClient::incoming_cpu`]). Read then, not at the end: the FIN of
    /// a close may leave the server from the softirq of the client's ACK,
    /// on the client's CPU.
    pub incoming_cpu: Option<u32>,
}

/// One connection: handshake, `GET /`, read until the server ends the stream.
/// Reading to the end also processes the TLS 1.3 tickets the server sends after
/// the handshake, so a resuming `config` holds them afterwards.
pub fn visit(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> io::Result<Visit> {
    let mut c = TlsClient::connect(addr, config, server_name)?;
    let incoming_cpu = c.incoming_cpu().ok();
    let (resp, end) = c.request(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", IO_TIMEOUT);
    Ok(Visit {
        resumed: c.resumed(),
        version: c.version(),
        http_200: is_http_200(&resp),
        end,
        incoming_cpu,
    })
}

/// True if `resp` starts with an HTTP 200 status line.
pub fn is_http_200(resp: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&resp[..resp.len().min(64)]).into_owned();
    head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")
}

/// Reads from a plain TCP socket until EOF or error, at most `timeout`.
/// Returns the bytes read and `Ok(())` for EOF, `Err(kind)` for an error
/// (a `TimedOut`/`WouldBlock` kind means it was still open at the deadline).
pub fn read_until_closed(
    sock: &mut TcpStream,
    timeout: Duration,
) -> (Vec<u8>, Result<(), io::ErrorKind>) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, Err(io::ErrorKind::TimedOut));
        }
        let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match sock.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return (got, Err(io::ErrorKind::TimedOut))
            }
            Err(e) => return (got, Err(e.kind())),
        }
    }
}

impl PumpOpts {
    /// Send everything, then `close_notify`; receive until the stream ends,
    /// within `timeout`.
    pub fn close_notify_after_send(timeout: Duration) -> PumpOpts {
        PumpOpts {
            close_notify_after_send: true,
            tcp_shutdown_after_close_notify: false,
            recv_until: None,
            timeout,
        }
    }

    /// Send everything and receive `count` bytes, within `timeout`; the
    /// connection stays open.
    pub fn receive(count: u64, timeout: Duration) -> PumpOpts {
        PumpOpts {
            close_notify_after_send: false,
            tcp_shutdown_after_close_notify: false,
            recv_until: Some(count),
            timeout,
        }
    }
}

impl TlsClient {
    /// [`pump`](Self::pump)s `len` bytes of the pattern of `seed` and checks
    /// what comes back against the same pattern (for an echo upstream).
    pub fn echo_pattern(
        &mut self,
        seed: u64,
        len: u64,
        opts: &PumpOpts,
    ) -> (PumpResult, PatternCheck) {
        let mut source = pattern_source(seed, len);
        let mut check = PatternCheck::new(seed);
        let r = self.pump(&mut source, &mut |d| check.feed(d), opts);
        (r, check)
    }
}
