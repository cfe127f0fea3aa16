//! One proxied connection — a TLS client on one side, a plaintext TCP
//! upstream on the other — as a sans-IO state machine, in the style of
//! quinn-proto's `Connection`.
//!
//! The worker's io_uring loop is only its driver. It feeds in what the
//! sockets produced ([`Connection::client_data`], [`Connection::upstream_data`],
//! end of stream, the outcome of sends and of the upstream connect) and the
//! time ([`Connection::handle_timeout`]); it asks what to do next:
//! [`Connection::poll_event`] (connect the upstream; the handshake is done),
//! [`Connection::poll_transmit`] (bytes to send on one socket),
//! [`Connection::poll_shutdown`] (a FIN is due), [`Connection::wants_read`]
//! (backpressure), [`Connection::poll_timeout`] (the one deadline that
//! matters now: handshake, connect or idle) and [`Connection::end`].
//! Handshake, half-close ordering, backpressure, timeouts, early data and
//! the failure policy are therefore all driven in memory by the tests.
//!
//! TLS is rustls's unbuffered API: records are decrypted in place in the
//! buffer they were received into, and plaintext from the upstream is
//! encrypted straight from its receive buffer into the buffer that is sent
//! to the client. Copies per byte, besides the kernel's own:
//! - client → upstream: decrypted in place in the receive buffer, then
//!   copied once into the send buffer towards the upstream (the receive
//!   buffer goes back to the kernel at once); a record split over two
//!   receives is first gathered into a per-connection buffer (one more
//!   copy, for that record only);
//! - upstream → client: encrypted from the receive buffer into the send
//!   buffer towards the client; no other copy.
//!
//! No buffer is held while a connection is idle: send buffers come from the
//! worker's [`BufPool`] when there is something to send and go back to it
//! once sent, and receive buffers belong to the kernel's provided-buffer
//! ring until a receive completes.
//!
//! After the handshake, the same shape would let kTLS take over: rustls's
//! `dangerous_into_kernel_connection` hands the secrets to the socket, and
//! the relay becomes two `splice` loops the driver runs without this state
//! machine's byte handling (docs/ARCHITECTURE.md).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::server::UnbufferedServerConnection;

use crate::client_hello::{self, HelloInfo};
use crate::metrics::Resumption;
use crate::proxy_protocol::{self, Header, Parsed, TlsFacts, MAX_HEADER};
use crate::resume_hint::ResumeHint;
use crate::uring::{Buf, BufPool};

/// Which socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The TLS client.
    Client,
    /// The plaintext upstream.
    Upstream,
}

/// Something the driver must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Open the upstream connection now: the handshake completed, or rustls
    /// accepted 0-RTT data that should reach the upstream at once.
    ConnectUpstream,
    /// The handshake completed (count it, log it).
    HandshakeDone,
    /// Look a session up before rustls sees the ClientHello: the request is
    /// [`Connection::lookup`]; answer with [`Connection::lookup_done`].
    Lookup,
    /// The upstream connect ran out of `upstream.connect_timeout`: the
    /// driver tries another server ([`Connection::connect_started`] again)
    /// or gives up ([`Connection::upstream_connected`] with the error).
    ConnectTimedOut,
}

/// A session the connection wants fetched before its handshake goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The TLS 1.2 session ID or the TLS 1.3 ticket (PSK identity).
    pub key: Vec<u8>,
    /// Redeem it (a single-use ticket: `GETDEL`) rather than read it.
    pub take: bool,
    /// Longest the handshake waits for the answer.
    pub budget: Duration,
}

/// What a [`HelloGate`] decided for one ClientHello.
#[derive(Default)]
pub struct Decision {
    /// Another rustls connection to hand the hello to (one made from a
    /// configuration suited to this hello), or `None` to keep the first.
    pub tls: Option<UnbufferedServerConnection>,
    /// A session to fetch before rustls sees the hello.
    pub lookup: Option<Lookup>,
}

/// Reads the ClientHello before rustls does and decides what must happen
/// first (the worker's policy: whether the remote tier must be asked,
/// which configuration resumes with fewer tickets).
pub trait HelloGate: Send + Sync {
    /// The decision for `hello`.
    fn decide(&self, hello: &HelloInfo) -> Decision;
}

/// The longest first record gathered before the gate gives up and lets
/// rustls judge the bytes (a TLS record is at most 16 KiB + 256).
const MAX_HELLO_RECORD: usize = 5 + 16 * 1024 + 256;

/// Why a connection failed, for counters and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Bad TLS from the client, or it went away during the handshake.
    Handshake,
    /// No complete handshake within `limits.handshake_timeout`.
    HandshakeTimeout,
    /// No byte moved for `limits.idle_timeout`.
    Idle,
    /// The upstream could not be reached, or reset.
    Upstream,
    /// The client's socket failed after the handshake.
    Client,
    /// The worker closed it (drain time over).
    Drain,
    /// `net.proxy_protocol = 1` and the connection did not start with a
    /// valid PROXY header.
    ProxyHeader,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both directions finished (close_notify or FIN each way).
    Finished,
    /// It failed; the reason is for the log.
    Failed(Failure, String),
}

/// The limits a connection runs under (a snapshot of the configuration
/// taken when it was accepted).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `limits.handshake_timeout`.
    pub handshake: Duration,
    /// `limits.idle_timeout`.
    pub idle: Duration,
    /// `upstream.connect_timeout`.
    pub connect: Duration,
    /// `proxy.buffer_size`: bytes queued per direction before reading from
    /// the other side pauses.
    pub buffer: usize,
}

/// One direction's output: a queue being filled, and whether the driver
/// holds a buffer of it in flight.
#[derive(Debug, Default)]
struct Outbox {
    /// Bytes queued, not yet handed to the driver.
    queued: Option<Buf>,
    /// A partly sent buffer to send again before anything queued.
    resend: Option<Buf>,
    /// Bytes the driver is sending now.
    inflight: usize,
    /// A send is in flight.
    busy: bool,
    /// FIN sent.
    fin_sent: bool,
}

impl Outbox {
    fn queue<'a>(queued: &'a mut Option<Buf>, pool: &mut BufPool) -> &'a mut Buf {
        queued.get_or_insert_with(|| pool.take())
    }

    /// Bytes waiting behind the send in flight: what backpressure counts,
    /// so that the next receive is read (and encrypted) while the previous
    /// one is being sent.
    fn backlog(&self) -> usize {
        self.queued.as_ref().map_or(0, Buf::len) + self.resend.as_ref().map_or(0, Buf::len)
    }

    fn flushed(&self) -> bool {
        self.backlog() == 0 && self.inflight == 0 && !self.busy
    }
}

/// One connection: rustls and both directions' queues.
pub struct Connection {
    tls: UnbufferedServerConnection,
    limits: Limits,
    started: Instant,
    last_activity: Instant,
    handshake_took: Option<Duration>,
    events: Vec<Event>,
    /// Partial TLS records from the client (a record split over receives).
    incoming: Option<Buf>,
    to_client: Outbox,
    to_upstream: Outbox,
    proxy_header: Option<Vec<u8>>,
    connect_requested: bool,
    connect_started: Option<Instant>,
    upstream_connected: bool,
    /// The client sends nothing more (close_notify or FIN).
    client_eof: bool,
    /// The upstream sends nothing more (FIN).
    upstream_eof: bool,
    close_notify_queued: bool,
    /// End once the client's output is flushed (an alert, or close_notify
    /// after the upstream failed).
    end_after_flush: Option<End>,
    end: Option<End>,
    early_bytes: u64,
    hint: Option<ResumeHint>,
    hello_seen: bool,
    server_name: Option<String>,
    bytes_up: u64,
    bytes_down: u64,
    /// Reads the ClientHello first, if set.
    gate: Option<Arc<dyn HelloGate>>,
    /// `net.proxy_protocol`: the bytes of the PROXY header gathered so far,
    /// until it is complete.
    proxy_in: Option<Vec<u8>>,
    /// The client's address and the one it connected to, as the PROXY
    /// header said.
    proxied: Option<(SocketAddr, SocketAddr)>,
    /// `upstream.proxy_protocol`: the version and the connection's own
    /// addresses; the header is built when the upstream is connected, with
    /// the PROXY header's addresses if one came.
    proxy_out: Option<(u8, SocketAddr, SocketAddr)>,
    /// Client bytes held back from rustls: the first record being gathered
    /// for the gate, or everything received while a lookup is out.
    held: Option<Buf>,
    /// The lookup asked for, until the driver answers or its budget ends.
    lookup: Option<Lookup>,
    lookup_deadline: Option<Instant>,
}

impl Connection {
    /// A connection accepted at `now`. `proxy_header`, if any, is sent to
    /// the upstream before any byte of the client's.
    pub fn new(
        tls: UnbufferedServerConnection,
        limits: Limits,
        proxy_header: Option<Vec<u8>>,
        now: Instant,
    ) -> Connection {
        Connection {
            tls,
            limits,
            started: now,
            last_activity: now,
            handshake_took: None,
            events: Vec::new(),
            incoming: None,
            to_client: Outbox::default(),
            to_upstream: Outbox::default(),
            proxy_header,
            connect_requested: false,
            connect_started: None,
            upstream_connected: false,
            client_eof: false,
            upstream_eof: false,
            close_notify_queued: false,
            end_after_flush: None,
            end: None,
            early_bytes: 0,
            hint: None,
            hello_seen: false,
            server_name: None,
            bytes_up: 0,
            bytes_down: 0,
            gate: None,
            proxy_in: None,
            proxied: None,
            proxy_out: None,
            held: None,
            lookup: None,
            lookup_deadline: None,
        }
    }

    /// The ClientHello goes through `gate` before rustls sees it.
    pub fn with_gate(mut self, gate: Arc<dyn HelloGate>) -> Connection {
        self.gate = Some(gate);
        self
    }

    // ---- input -------------------------------------------------------

    /// Bytes the client sent. They are decrypted in place, so `data` is
    /// clobbered; whatever is left of an incomplete record is kept.
    pub fn client_data(&mut self, now: Instant, data: &mut [u8], pool: &mut BufPool) {
        if self.end.is_some() || self.client_eof || self.end_after_flush.is_some() {
            return;
        }
        self.last_activity = now;
        if let Some(gathered) = self.proxy_in.as_mut() {
            let room = MAX_HEADER.saturating_sub(gathered.len());
            let take = data.len().min(room);
            gathered.extend_from_slice(&data[..take]);
            match proxy_protocol::parse(gathered) {
                Parsed::Incomplete if gathered.len() < MAX_HEADER => return,
                Parsed::Incomplete => {
                    self.fail(Failure::ProxyHeader, "PROXY header too long".into());
                    return;
                }
                Parsed::Invalid(why) => {
                    self.fail(
                        Failure::ProxyHeader,
                        format!("no valid PROXY header: {why}"),
                    );
                    return;
                }
                Parsed::Complete { header, len } => {
                    if let Header::Proxied {
                        source,
                        destination,
                    } = header
                    {
                        self.proxied = Some((source, destination));
                    }
                    // What followed the header in the gathered bytes, then
                    // the rest of this receive: the client's own bytes.
                    let mut after = gathered.split_off(len);
                    after.extend_from_slice(&data[take..]);
                    self.proxy_in = None;
                    if !after.is_empty() {
                        self.client_bytes(now, &mut after, pool);
                    }
                    return;
                }
            }
        }
        self.client_bytes(now, data, pool);
    }

    /// The client's bytes after any PROXY header.
    fn client_bytes(&mut self, now: Instant, data: &mut [u8], pool: &mut BufPool) {
        if self.lookup_deadline.is_some() {
            // rustls waits for the lookup; so does everything after the hello.
            if let Some(held) = self.held.as_mut() {
                held.extend(data);
            }
            return;
        }
        if !self.hello_seen {
            if self.gate.is_some() {
                if !self.gate_hello(now, data, pool) {
                    return;
                }
            } else {
                self.hello_seen = true;
                self.server_name = client_hello::parse(data).and_then(|h| h.server_name);
            }
        }
        self.feed(now, data, pool);
    }

    /// Gathers the first record for the gate and acts on its decision.
    /// True: go on with `data` as usual; false: the bytes are held (the
    /// record is incomplete, or a lookup is out) or were fed already.
    fn gate_hello(&mut self, now: Instant, data: &mut [u8], pool: &mut BufPool) -> bool {
        let first = self.held.as_ref().map_or(&data[..], |h| h.pending());
        if !first.is_empty() && (first[0] != 22 || first.get(1).is_some_and(|&v| v != 3)) {
            // Not a TLS handshake record (plain HTTP, garbage): rustls
            // refuses it at once; nothing to gather.
            self.hello_seen = true;
            if let Some(held) = self.held.as_mut() {
                held.extend(data);
                self.feed_held(now, None, pool);
                return false;
            }
            return true;
        }
        let whole_here = self.held.is_none()
            && client_hello::first_record_len(data).is_some_and(|n| n <= data.len());
        if !whole_here {
            let held = self.held.get_or_insert_with(|| pool.take());
            held.extend(data);
            let have = held.len();
            match client_hello::first_record_len(held.pending()) {
                Some(n) if n <= have => {}
                // Not a record rustls would take: let it say so.
                Some(n) if n > MAX_HELLO_RECORD => {}
                _ if have > MAX_HELLO_RECORD => {}
                _ => return false,
            }
        }
        self.hello_seen = true;
        let hello = match &self.held {
            Some(held) => client_hello::parse(held.pending()),
            None => client_hello::parse(data),
        };
        let decision = match (&self.gate, &hello) {
            (Some(gate), Some(hello)) => gate.decide(hello),
            _ => Decision::default(),
        };
        self.server_name = hello.and_then(|h| h.server_name);
        if let Some(tls) = decision.tls {
            // Nothing was fed to the first one yet.
            self.tls = tls;
        }
        if let Some(lookup) = decision.lookup {
            if whole_here {
                let mut held = pool.take();
                held.extend(data);
                self.held = Some(held);
            }
            self.lookup_deadline = Some(now + lookup.budget);
            self.lookup = Some(lookup);
            self.events.push(Event::Lookup);
            return false;
        }
        if whole_here {
            return true;
        }
        self.feed_held(now, None, pool);
        false
    }

    /// The lookup the connection waits for ([`Event::Lookup`]).
    pub fn lookup(&self) -> Option<&Lookup> {
        self.lookup_deadline.and(self.lookup.as_ref())
    }

    /// The driver's answer to [`Event::Lookup`]: for a redeemed ticket, the
    /// session Redis gave up (`None` for anything else: a session ID's
    /// session is in the local cache already, or there was none). rustls
    /// now gets the held bytes.
    pub fn lookup_done(&mut self, now: Instant, redeemed: Option<Vec<u8>>, pool: &mut BufPool) {
        if self.lookup_deadline.take().is_none() {
            return;
        }
        let lookup = self.lookup.take();
        if self.end.is_some() {
            return;
        }
        let fetched = match (lookup, redeemed) {
            (Some(l), Some(session)) if l.take => Some((l.key, session)),
            _ => None,
        };
        self.feed_held(now, fetched, pool);
    }

    /// Hands the held bytes to rustls (with a redeemed ticket placed where
    /// the store's `take` finds it while rustls reads the hello).
    fn feed_held(&mut self, now: Instant, fetched: Option<(Vec<u8>, Vec<u8>)>, pool: &mut BufPool) {
        let Some(held) = self.held.take() else {
            return;
        };
        debug_assert!(self.incoming.is_none());
        self.incoming = Some(held);
        match fetched {
            Some((key, session)) => {
                crate::session_cache::fetched::with(key, session, || self.feed(now, &mut [], pool))
            }
            None => self.feed(now, &mut [], pool),
        }
    }

    /// Runs rustls over `data`, after whatever partial record is kept.
    fn feed(&mut self, now: Instant, data: &mut [u8], pool: &mut BufPool) {
        let mut data = data;
        let result = loop {
            match self.incoming.take() {
                None => break self.pump_in_place(data, pool),
                Some(mut gathered) => {
                    // Complete only the split record from the new bytes;
                    // the rest is decrypted where it was received.
                    let take = incomplete_record_needs(gathered.pending())
                        .unwrap_or(data.len())
                        .min(data.len());
                    gathered.extend(&data[..take]);
                    data = &mut data[take..];
                    let result = self.pump(gathered.filled_mut(), None, pool);
                    if let Ok((used, _)) = result {
                        gathered.consume(used);
                    }
                    if gathered.is_empty() {
                        pool.give(gathered);
                        if result.is_ok() && !data.is_empty() {
                            continue;
                        }
                        break result.map(|_| ());
                    }
                    if result.is_ok() && !data.is_empty() {
                        // rustls keeps bytes (a handshake message spread over
                        // records) that must stay next to what follows.
                        gathered.extend(data);
                        self.incoming = Some(gathered);
                        let result = self.pump_without_input(None, pool);
                        break result;
                    }
                    self.incoming = Some(gathered);
                    break result.map(|_| ());
                }
            }
        };
        self.after_pump(now, result);
    }

    /// Runs rustls over freshly received bytes in place; an incomplete
    /// record at the end is kept for the next receive.
    fn pump_in_place(&mut self, data: &mut [u8], pool: &mut BufPool) -> Result<(), rustls::Error> {
        let result = self.pump(data, None, pool);
        if let Ok((used, _)) = result {
            if used < data.len() {
                let mut rest = pool.take();
                rest.extend(&data[used..]);
                self.incoming = Some(rest);
            }
        }
        result.map(|_| ())
    }

    /// The client's stream ended (FIN).
    pub fn client_eof(&mut self, now: Instant) {
        if self.end.is_some() {
            return;
        }
        if self.tls.is_handshaking() {
            self.fail(
                Failure::Handshake,
                "the client closed the connection during the handshake".into(),
            );
            return;
        }
        // A TCP FIN without close_notify: most clients (curl among them)
        // end this way; for a byte-stream proxy it is a half-close.
        self.client_eof = true;
        self.last_activity = now;
    }

    /// Reading from or writing to `side` failed.
    pub fn socket_error(&mut self, side: Side, what: &str, error: io::Error) {
        let failure = match side {
            Side::Upstream => Failure::Upstream,
            Side::Client if self.tls.is_handshaking() => Failure::Handshake,
            Side::Client => Failure::Client,
        };
        let whose = match side {
            Side::Client => "the client",
            Side::Upstream => "the upstream",
        };
        self.fail(failure, format!("{what} {whose}: {error}"));
    }

    /// `net.proxy_protocol`: the connection starts with a PROXY header (v1
    /// or v2), read and taken off before TLS; without a valid one it fails
    /// ([`Failure::ProxyHeader`]).
    pub fn with_proxy_in(mut self) -> Connection {
        self.proxy_in = Some(Vec::new());
        self
    }

    /// `upstream.proxy_protocol`: send the upstream a PROXY header of
    /// `version` naming `client` and `local` — or the addresses of the
    /// PROXY header the connection came with.
    pub fn with_proxy_out(
        mut self,
        version: u8,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Connection {
        self.proxy_out = Some((version, client, local));
        self
    }

    /// The client's address as the PROXY header named it, if one did.
    pub fn proxied_client(&self) -> Option<SocketAddr> {
        self.proxied.map(|(source, _)| source)
    }

    /// The driver started the upstream connect.
    pub fn connect_started(&mut self, now: Instant) {
        self.connect_started = Some(now);
    }

    /// The upstream connect finished.
    pub fn upstream_connected(&mut self, now: Instant, result: io::Result<()>, pool: &mut BufPool) {
        if self.end.is_some() {
            return;
        }
        self.connect_started = None;
        match result {
            Ok(()) => {
                self.upstream_connected = true;
                self.last_activity = now;
                if let Some((version, src, dst)) = self.proxy_out.take() {
                    let (src, dst) = self.proxied.unwrap_or((src, dst));
                    self.proxy_header = Some(if version == 2 {
                        proxy_protocol::proxy_protocol_v2_with_tls(src, dst, &self.tls_facts())
                    } else {
                        proxy_protocol::proxy_protocol_header(version, src, dst)
                    });
                }
                if let Some(header) = self.proxy_header.take() {
                    let mut first = pool.take();
                    first.extend(&header);
                    if let Some(queued) = self.to_upstream.queued.take() {
                        first.extend(queued.pending());
                        pool.give(queued);
                    }
                    self.to_upstream.queued = Some(first);
                }
            }
            Err(e) => self.upstream_unreachable(now, format!("connecting: {e}"), pool),
        }
    }

    /// Plaintext the upstream sent: encrypted for the client.
    pub fn upstream_data(&mut self, now: Instant, data: &[u8], pool: &mut BufPool) {
        if self.end.is_some() {
            return;
        }
        self.last_activity = now;
        self.bytes_down += data.len() as u64;
        let result = self.pump_without_input(Some(data), pool);
        self.after_pump(now, result);
    }

    /// The upstream's stream ended: close_notify, then FIN, to the client.
    pub fn upstream_eof(&mut self, now: Instant, pool: &mut BufPool) {
        if self.end.is_some() {
            return;
        }
        self.upstream_eof = true;
        self.last_activity = now;
        let result = self.pump_without_input(None, pool);
        self.after_pump(now, result);
    }

    /// A send the driver made from a buffer of [`Connection::poll_transmit`]
    /// finished: `result` is how many bytes went out.
    pub fn sent(
        &mut self,
        now: Instant,
        side: Side,
        mut buf: Buf,
        result: io::Result<usize>,
        pool: &mut BufPool,
    ) {
        let outbox = match side {
            Side::Client => &mut self.to_client,
            Side::Upstream => &mut self.to_upstream,
        };
        outbox.busy = false;
        outbox.inflight = 0;
        match result {
            Ok(n) if n > 0 || buf.is_empty() => {
                buf.advance(n);
                if buf.is_empty() {
                    pool.give(buf);
                } else {
                    outbox.resend = Some(buf);
                }
                self.last_activity = now;
                self.check_flushed();
            }
            Ok(_) => {
                pool.give(buf);
                self.socket_error(
                    side,
                    "writing to",
                    io::Error::new(io::ErrorKind::WriteZero, "wrote nothing"),
                );
            }
            Err(e) => {
                pool.give(buf);
                if self.end.is_none() {
                    self.socket_error(side, "writing to", e);
                }
            }
        }
    }

    /// Deadlines that passed by `now` take effect.
    pub fn handle_timeout(&mut self, now: Instant, pool: &mut BufPool) {
        if self.end.is_some() {
            return;
        }
        if self.lookup_deadline.is_some_and(|at| now >= at) {
            // No answer in time: the handshake goes on without it (a full
            // one, unless the session is local after all).
            self.lookup_done(now, None, pool);
            if self.end.is_some() {
                return;
            }
        }
        if self.tls.is_handshaking() && now >= self.started + self.limits.handshake {
            let limit = self.limits.handshake;
            self.fail(
                Failure::HandshakeTimeout,
                format!("no complete handshake within {limit:?}"),
            );
            return;
        }
        if let Some(started) = self.connect_started {
            if now >= started + self.limits.connect {
                self.connect_started = None;
                self.events.push(Event::ConnectTimedOut);
                return;
            }
        }
        if !self.tls.is_handshaking() && now >= self.last_activity + self.limits.idle {
            let limit = self.limits.idle;
            self.fail(
                Failure::Idle,
                format!("idle for {limit:?} (limits.idle_timeout)"),
            );
        }
    }

    /// The worker ends the connection (drain time over).
    pub fn abort(&mut self, failure: Failure, reason: String) {
        self.fail(failure, reason);
    }

    // ---- output ------------------------------------------------------

    /// The next thing the driver must do, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// Bytes to send on `side` now, if any and if no send is in flight
    /// there. Give the buffer back through [`Connection::sent`].
    pub fn poll_transmit(&mut self, side: Side) -> Option<Buf> {
        if self.end.is_some() {
            return None;
        }
        if side == Side::Upstream && !self.upstream_connected {
            return None;
        }
        let outbox = match side {
            Side::Client => &mut self.to_client,
            Side::Upstream => &mut self.to_upstream,
        };
        if outbox.busy {
            return None;
        }
        let buf = outbox
            .resend
            .take()
            .or_else(|| outbox.queued.take().filter(|b| !b.is_empty()))?;
        outbox.busy = true;
        outbox.inflight = buf.len();
        Some(buf)
    }

    /// A FIN is due on `side` (everything before it has been sent).
    pub fn poll_shutdown(&mut self, side: Side) -> bool {
        if self.end.is_some() {
            return false;
        }
        let due = match side {
            Side::Upstream => {
                self.client_eof
                    && self.upstream_connected
                    && self.incoming.is_none()
                    && self.to_upstream.flushed()
                    && !self.to_upstream.fin_sent
            }
            Side::Client => {
                self.close_notify_queued
                    && self.end_after_flush.is_none()
                    && self.to_client.flushed()
                    && !self.to_client.fin_sent
            }
        };
        if due {
            match side {
                Side::Client => self.to_client.fin_sent = true,
                Side::Upstream => self.to_upstream.fin_sent = true,
            }
            self.check_finished();
        }
        due
    }

    /// Whether the driver should read from `side` now (backpressure: a
    /// direction whose queue is over `proxy.buffer_size` stops reading).
    pub fn wants_read(&self, side: Side) -> bool {
        if self.end.is_some() || self.end_after_flush.is_some() {
            return false;
        }
        match side {
            Side::Client => {
                !self.client_eof
                    && self.to_upstream.backlog() < self.limits.buffer
                    && self.held.as_ref().map_or(0, Buf::len) < self.limits.buffer
            }
            Side::Upstream => {
                self.upstream_connected
                    && !self.upstream_eof
                    && !self.tls.is_handshaking()
                    && self.to_client.backlog() < self.limits.buffer
            }
        }
    }

    /// The earliest deadline (handshake, connect or idle), if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.end.is_some() {
            return None;
        }
        let mut deadline = if self.tls.is_handshaking() {
            self.started + self.limits.handshake
        } else {
            self.last_activity + self.limits.idle
        };
        if let Some(started) = self.connect_started {
            deadline = deadline.min(started + self.limits.connect);
        }
        if let Some(at) = self.lookup_deadline {
            deadline = deadline.min(at);
        }
        Some(deadline)
    }

    /// How the connection ended, once it has.
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    // ---- what the driver reports --------------------------------------

    /// How the completed handshake got its session.
    pub fn resumption(&self) -> Resumption {
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

    /// What the upstream is told of this TLS connection (PROXY v2 TLVs).
    pub fn tls_facts(&self) -> TlsFacts {
        let certs = self.tls.peer_certificates();
        TlsFacts {
            alpn: self.tls.alpn_protocol().map(<[u8]>::to_vec),
            authority: self.server_name.clone(),
            version: match self.tls.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
                Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
                _ => None,
            },
            cipher: self
                .tls
                .negotiated_cipher_suite()
                .and_then(|s| proxy_protocol::openssl_cipher_name(s.suite())),
            // rustls finishes no handshake whose client certificate failed
            // verification: one that is there was verified.
            client_cert: certs.is_some_and(|c| !c.is_empty()),
            client_cert_verified: certs.is_some_and(|c| !c.is_empty()),
            client_cn: certs
                .and_then(|c| c.first())
                .and_then(|leaf| proxy_protocol::send::common_name(leaf)),
        }
    }

    /// The negotiated protocol version.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.protocol_version()
    }

    /// The negotiated ALPN protocol.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls.alpn_protocol()
    }

    /// `verified` when the client presented a certificate (rustls's
    /// verifier let it in, so it verified against `tls.client_ca`, in this
    /// handshake or the one of the session it resumed), else `-`.
    pub fn client_cert(&self) -> &'static str {
        if self.tls.peer_certificates().is_some_and(|c| !c.is_empty()) {
            "verified"
        } else {
            "-"
        }
    }

    /// The server name the client asked for.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// How long the handshake took.
    pub fn handshake_took(&self) -> Option<Duration> {
        self.handshake_took
    }

    /// 0-RTT bytes accepted.
    pub fn early_data_bytes(&self) -> u64 {
        self.early_bytes
    }

    /// Plaintext bytes client → upstream and upstream → client.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_up, self.bytes_down)
    }

    /// When the connection was accepted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Gives every buffer back (the connection is being dropped).
    pub fn release(&mut self, pool: &mut BufPool) {
        for b in [
            self.incoming.take(),
            self.held.take(),
            self.to_client.queued.take(),
            self.to_client.resend.take(),
            self.to_upstream.queued.take(),
            self.to_upstream.resend.take(),
        ]
        .into_iter()
        .flatten()
        {
            pool.give(b);
        }
    }

    // ---- internals ---------------------------------------------------

    fn fail(&mut self, failure: Failure, reason: String) {
        if self.end.is_none() {
            self.end = Some(End::Failed(failure, reason));
            self.events.clear();
        }
    }

    /// The upstream cannot be used: tell the client with close_notify, then
    /// end once that is sent.
    fn upstream_unreachable(&mut self, now: Instant, reason: String, pool: &mut BufPool) {
        self.upstream_eof = true;
        let result = self.pump_without_input(None, pool);
        self.after_pump(now, result);
        if self.end.is_none() {
            self.end_after_flush = Some(End::Failed(Failure::Upstream, reason));
            self.check_flushed();
        }
    }

    fn check_flushed(&mut self) {
        if self.end.is_none() && self.end_after_flush.is_some() && self.to_client.flushed() {
            self.end = self.end_after_flush.take();
        }
        self.check_finished();
    }

    fn check_finished(&mut self) {
        if self.end.is_none()
            && self.to_client.fin_sent
            && self.to_upstream.fin_sent
            && self.to_client.flushed()
            && self.to_upstream.flushed()
        {
            self.end = Some(End::Finished);
        }
    }
}

/// How many more bytes complete the records in `pending` (whole TLS
/// records, then one incomplete one), or `None` when that is not known yet
/// (its 5-byte header is incomplete).
fn incomplete_record_needs(pending: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let rest = &pending[at..];
        if rest.len() < 5 {
            return None;
        }
        let len = 5 + usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if rest.len() < len {
            return Some(len - rest.len());
        }
        at += len;
    }
}

mod records;
#[cfg(test)]
mod tests;
