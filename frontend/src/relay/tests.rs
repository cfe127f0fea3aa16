//! The connection state machine driven in memory: a real rustls client on
//! one side, a byte vector for the upstream on the other, time passed in by
//! hand. No sockets.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

use super::{Connection, End, Event, Failure, Limits, Side};
use crate::uring::BufPool;

const LIMIT: usize = 64 * 1024;

fn limits() -> Limits {
    Limits {
        handshake: Duration::from_secs(10),
        idle: Duration::from_secs(300),
        connect: Duration::from_secs(5),
        buffer: LIMIT,
    }
}

fn configs(early_data: u32) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let provider = crate::tls::provider();
    let key = crate::tls::self_signed(&provider).expect("self-signed cert");
    let mut roots = RootCertStore::empty();
    roots
        .add(key.cert[0].clone())
        .expect("self-signed cert is a valid root");
    let resolver = crate::tls::CertResolver::new(Arc::new(key), Default::default());
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    server.max_early_data_size = early_data;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.enable_early_data = early_data > 0;
    (Arc::new(server), Arc::new(client))
}

/// A client, the connection under test, and what reached the upstream.
struct Rig {
    client: ClientConnection,
    conn: Connection,
    pool: BufPool,
    now: Instant,
    upstream: Vec<u8>,
    /// Plaintext the client read.
    client_got: Vec<u8>,
    /// The client's reader reported a clean end (close_notify).
    client_eof_seen: bool,
    upstream_fin: bool,
    client_fin: bool,
    /// Answer the upstream connect automatically.
    auto_connect: bool,
    /// Deliver what the connection sends to the client.
    deliver_to_client: bool,
    /// Bytes per receive the connection is fed.
    chunk: usize,
}

impl Rig {
    fn new(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Rig {
        let now = Instant::now();
        let name = ServerName::try_from("localhost").expect("name");
        Rig {
            client: ClientConnection::new(client, name).expect("client"),
            conn: Connection::new(
                UnbufferedServerConnection::new(server).expect("server"),
                limits(),
                None,
                now,
            ),
            pool: BufPool::new(16),
            now,
            upstream: Vec::new(),
            client_got: Vec::new(),
            client_eof_seen: false,
            upstream_fin: false,
            client_fin: false,
            auto_connect: true,
            deliver_to_client: true,
            chunk: usize::MAX,
        }
    }

    fn connected() -> Rig {
        let (server, client) = configs(0);
        let mut rig = Rig::new(server, client);
        rig.pump();
        assert!(!rig.client.is_handshaking(), "client still handshaking");
        rig
    }

    /// Moves bytes both ways until nothing moves.
    fn pump(&mut self) -> usize {
        let mut moved = 0;
        for _ in 0..10_000 {
            let mut progressed = false;
            while let Some(event) = self.conn.poll_event() {
                if event == Event::ConnectUpstream && self.auto_connect {
                    self.conn.connect_started(self.now);
                    self.conn
                        .upstream_connected(self.now, Ok(()), &mut self.pool);
                }
                progressed = true;
            }
            if self.conn.wants_read(Side::Client) && self.client.wants_write() {
                let mut bytes = Vec::new();
                self.client.write_tls(&mut bytes).expect("client write_tls");
                let size = self.chunk.min(bytes.len().max(1));
                for piece in bytes.chunks_mut(size) {
                    self.conn.client_data(self.now, piece, &mut self.pool);
                }
                progressed = true;
            }
            if self.deliver_to_client {
                if let Some(buf) = self.conn.poll_transmit(Side::Client) {
                    let mut data = buf.pending();
                    let n = data.len();
                    while !data.is_empty() {
                        self.client.read_tls(&mut data).expect("client read_tls");
                        self.client
                            .process_new_packets()
                            .expect("client accepts the server's records");
                        let got = self.read_client();
                        self.client_got.extend_from_slice(&got);
                    }
                    self.conn
                        .sent(self.now, Side::Client, buf, Ok(n), &mut self.pool);
                    moved += n;
                    progressed = true;
                }
            }
            if let Some(buf) = self.conn.poll_transmit(Side::Upstream) {
                let n = buf.len();
                self.upstream.extend_from_slice(buf.pending());
                self.conn
                    .sent(self.now, Side::Upstream, buf, Ok(n), &mut self.pool);
                progressed = true;
            }
            if self.conn.poll_shutdown(Side::Upstream) {
                self.upstream_fin = true;
                progressed = true;
            }
            if self.conn.poll_shutdown(Side::Client) {
                self.client_fin = true;
                progressed = true;
            }
            if !progressed {
                return moved;
            }
        }
        panic!("no quiescence after 10,000 rounds");
    }

    fn client_plaintext(&mut self) -> Vec<u8> {
        let mut got = std::mem::take(&mut self.client_got);
        got.extend(self.read_client());
        got
    }

    fn read_client(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            match self.client.reader().read(&mut chunk) {
                Ok(0) => {
                    self.client_eof_seen = true;
                    return out;
                }
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return out,
                Err(e) => panic!("client read: {e}"),
            }
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn handshake_completes_in_memory_and_asks_for_the_upstream_once() {
    let (server, client) = configs(0);
    let mut rig = Rig::new(server, client);
    rig.auto_connect = false;
    rig.pump();
    assert!(!rig.client.is_handshaking());
    // Both events were consumed by pump(); a second pump produces none.
    assert_eq!(rig.conn.poll_event(), None);
    assert!(rig.conn.handshake_took().is_some());
    assert_eq!(rig.conn.server_name(), Some("localhost"));
}

#[test]
fn client_plaintext_reaches_the_upstream_byte_exact() {
    let mut rig = Rig::connected();
    let data = pattern(1 << 20);
    let mut written = 0;
    while written < data.len() {
        written += rig.client.writer().write(&data[written..]).expect("write");
        rig.pump();
    }
    rig.pump();
    assert_eq!(rig.upstream.len(), data.len());
    assert!(rig.upstream == data, "bytes differ");
    assert_eq!(rig.conn.bytes().0, data.len() as u64);
}

#[test]
fn a_record_split_into_one_byte_receives_is_gathered() {
    let (server, client) = configs(0);
    let mut rig = Rig::new(server, client);
    rig.chunk = 1;
    rig.pump();
    assert!(!rig.client.is_handshaking());
    rig.client
        .writer()
        .write_all(b"split hello")
        .expect("write");
    rig.pump();
    assert_eq!(rig.upstream, b"split hello");
}

#[test]
fn upstream_bytes_reach_the_client_and_its_fin_becomes_close_notify_then_fin() {
    let mut rig = Rig::connected();
    let data = pattern(300_000);
    for piece in data.chunks(16 * 1024) {
        assert!(rig.conn.wants_read(Side::Upstream));
        rig.conn.upstream_data(rig.now, piece, &mut rig.pool);
        rig.pump();
    }
    rig.conn.upstream_eof(rig.now, &mut rig.pool);
    rig.pump();
    let got = rig.client_plaintext();
    assert!(
        got == data,
        "client got {} of {} bytes",
        got.len(),
        data.len()
    );
    assert!(rig.client_fin, "no FIN after close_notify");
    assert!(rig.client_eof_seen, "close_notify did not reach the client");
    assert_eq!(rig.conn.end(), None, "the client may still send");
}

#[test]
fn reading_from_the_upstream_pauses_while_the_client_does_not_read() {
    let mut rig = Rig::connected();
    rig.deliver_to_client = false;
    let mut fed = 0;
    while rig.conn.wants_read(Side::Upstream) {
        rig.conn
            .upstream_data(rig.now, &[b'x'; 16 * 1024], &mut rig.pool);
        fed += 16 * 1024;
        rig.pump();
        assert!(fed <= LIMIT + 64 * 1024, "never paused after {fed} bytes");
    }
    assert!(fed >= LIMIT / 2, "paused after only {fed} bytes");
    // The client starts reading: the connection wants more again.
    rig.deliver_to_client = true;
    rig.pump();
    assert!(rig.conn.wants_read(Side::Upstream));
    assert_eq!(rig.client_plaintext().len(), fed);
}

#[test]
fn reading_from_the_client_pauses_while_the_upstream_does_not_take() {
    let (server, client) = configs(0);
    let mut rig = Rig::new(server, client);
    rig.auto_connect = false;
    rig.client.set_buffer_limit(None);
    rig.pump();
    let data = pattern(LIMIT * 3);
    rig.client.writer().write_all(&data).expect("write");
    rig.pump();
    assert!(
        !rig.conn.wants_read(Side::Client),
        "still reading past the limit"
    );
    rig.conn.connect_started(rig.now);
    rig.conn.upstream_connected(rig.now, Ok(()), &mut rig.pool);
    rig.pump();
    assert!(
        rig.upstream == data,
        "got {} of {}",
        rig.upstream.len(),
        data.len()
    );
}

#[test]
fn client_close_notify_is_a_half_close() {
    let mut rig = Rig::connected();
    rig.client.writer().write_all(b"last words").expect("write");
    rig.client.send_close_notify();
    rig.pump();
    assert_eq!(rig.upstream, b"last words");
    assert!(rig.upstream_fin, "the upstream did not get a FIN");
    assert_eq!(rig.conn.end(), None);
    rig.conn.upstream_data(rig.now, b"reply", &mut rig.pool);
    rig.conn.upstream_eof(rig.now, &mut rig.pool);
    rig.pump();
    assert_eq!(rig.client_plaintext(), b"reply");
    assert_eq!(rig.conn.end(), Some(&End::Finished));
}

#[test]
fn tcp_fin_without_close_notify_is_a_half_close() {
    let mut rig = Rig::connected();
    rig.conn.client_eof(rig.now);
    rig.pump();
    assert!(rig.upstream_fin);
    assert_eq!(rig.conn.end(), None);
}

#[test]
fn garbage_instead_of_a_client_hello_gets_an_alert_then_ends() {
    let (server, client) = configs(0);
    let mut rig = Rig::new(server, client);
    // A handshake record holding a ServerHello: not what a server expects.
    let mut garbage = *b"\x16\x03\x01\x00\x04\x02\x00\x00\x00";
    rig.conn.client_data(rig.now, &mut garbage, &mut rig.pool);
    let alert = rig.conn.poll_transmit(Side::Client).expect("an alert");
    assert_eq!(alert.pending()[0], 21, "not an alert record");
    let n = alert.len();
    rig.conn
        .sent(rig.now, Side::Client, alert, Ok(n), &mut rig.pool);
    assert!(
        matches!(rig.conn.end(), Some(End::Failed(Failure::Handshake, _))),
        "{:?}",
        rig.conn.end()
    );
}

#[test]
fn the_client_leaving_during_the_handshake_is_a_handshake_failure() {
    let (server, client) = configs(0);
    let mut rig = Rig::new(server, client);
    rig.conn.client_eof(rig.now);
    assert!(matches!(
        rig.conn.end(),
        Some(End::Failed(Failure::Handshake, _))
    ));
}

#[test]
fn no_handshake_within_the_limit_ends_the_connection_at_its_deadline() {
    let (server, client) = configs(0);
    let rig = Rig::new(server, client);
    let mut conn = rig.conn;
    assert_eq!(conn.poll_timeout(), Some(rig.now + limits().handshake));
    conn.handle_timeout(
        rig.now + limits().handshake - Duration::from_millis(1),
        &mut BufPool::new(4),
    );
    assert_eq!(conn.end(), None);
    conn.handle_timeout(rig.now + limits().handshake, &mut BufPool::new(4));
    assert!(matches!(
        conn.end(),
        Some(End::Failed(Failure::HandshakeTimeout, _))
    ));
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn an_idle_connection_ends_at_the_idle_limit_and_traffic_moves_it() {
    let mut rig = Rig::connected();
    let idle = limits().idle;
    assert_eq!(rig.conn.poll_timeout(), Some(rig.now + idle));
    let later = rig.now + idle / 2;
    rig.conn.upstream_data(later, b"x", &mut rig.pool);
    assert_eq!(rig.conn.poll_timeout(), Some(later + idle));
    rig.conn.handle_timeout(rig.now + idle, &mut rig.pool);
    assert_eq!(rig.conn.end(), None, "closed although traffic moved");
    rig.conn.handle_timeout(later + idle, &mut rig.pool);
    assert!(matches!(
        rig.conn.end(),
        Some(End::Failed(Failure::Idle, _))
    ));
}

/// A handshaken connection whose upstream connect ran out of its time:
/// the rig and that deadline.
fn connect_timed_out() -> (Rig, Instant) {
    let (server, client) = configs(0);
    let mut rig = Rig::new(server, client);
    rig.auto_connect = false;
    rig.pump();
    rig.conn.connect_started(rig.now);
    let deadline = rig.now + limits().connect;
    assert!(rig.conn.poll_timeout() <= Some(deadline));
    rig.conn.handle_timeout(deadline, &mut rig.pool);
    assert_eq!(rig.conn.poll_event(), Some(Event::ConnectTimedOut));
    (rig, deadline)
}

#[test]
fn an_upstream_that_does_not_answer_ends_the_client_with_close_notify() {
    let (mut rig, deadline) = connect_timed_out();
    // The driver has no other server to try.
    rig.conn.upstream_connected(
        deadline,
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer",
        )),
        &mut rig.pool,
    );
    let out = rig.conn.poll_transmit(Side::Client).expect("close_notify");
    let n = out.len();
    let mut data = out.pending();
    rig.client.read_tls(&mut data).expect("read_tls");
    rig.client.process_new_packets().expect("process");
    rig.conn
        .sent(rig.now, Side::Client, out, Ok(n), &mut rig.pool);
    assert!(matches!(
        rig.conn.end(),
        Some(End::Failed(Failure::Upstream, _))
    ));
    let mut b = [0u8; 1];
    assert_eq!(rig.client.reader().read(&mut b).expect("clean EOF"), 0);
}

#[test]
fn a_connect_that_timed_out_can_go_to_another_server_with_a_deadline_of_its_own() {
    let (mut rig, deadline) = connect_timed_out();
    assert!(
        rig.conn.end().is_none(),
        "the driver decides, not the connection"
    );
    rig.now = deadline;
    rig.conn.connect_started(rig.now);
    assert_eq!(rig.conn.poll_timeout(), Some(rig.now + limits().connect));
    rig.conn.upstream_connected(rig.now, Ok(()), &mut rig.pool);
    rig.client
        .writer()
        .write_all(b"second server")
        .expect("write");
    rig.pump();
    assert_eq!(rig.upstream, b"second server");
}

#[test]
fn a_refused_upstream_connect_ends_the_client_with_close_notify() {
    let (server, client) = configs(0);
    let mut rig = Rig::new(server, client);
    rig.auto_connect = false;
    rig.pump();
    rig.conn.upstream_connected(
        rig.now,
        Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        &mut rig.pool,
    );
    rig.pump();
    assert!(matches!(
        rig.conn.end(),
        Some(End::Failed(Failure::Upstream, _))
    ));
}

#[test]
fn the_proxy_header_precedes_every_client_byte() {
    let (server, client) = configs(0);
    let mut rig = Rig::new(server.clone(), client);
    rig.conn = Connection::new(
        UnbufferedServerConnection::new(server).expect("server"),
        limits(),
        Some(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec()),
        rig.now,
    );
    rig.auto_connect = false;
    rig.pump();
    rig.client.writer().write_all(b"GET /").expect("write");
    rig.pump();
    rig.conn.connect_started(rig.now);
    rig.conn.upstream_connected(rig.now, Ok(()), &mut rig.pool);
    rig.pump();
    assert_eq!(rig.upstream, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET /");
}

#[test]
fn a_proxy_header_in_comes_off_before_tls_and_its_client_goes_to_the_upstream() {
    let (server, client) = configs(0);
    let mut rig = Rig::new(server.clone(), client);
    let balancer: std::net::SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let local: std::net::SocketAddr = "10.0.0.2:443".parse().unwrap();
    rig.conn = Connection::new(
        UnbufferedServerConnection::new(server).expect("server"),
        limits(),
        None,
        rig.now,
    )
    .with_proxy_in()
    .with_proxy_out(1, balancer, local);
    // The header split over two receives, the ClientHello right after it
    // in the second.
    let header = b"PROXY TCP4 192.0.2.7 198.51.100.9 5555 443\r\n";
    rig.conn
        .client_data(rig.now, &mut header[..10].to_vec(), &mut rig.pool);
    let mut hello = Vec::new();
    rig.client.write_tls(&mut hello).expect("hello");
    let mut rest = [&header[10..], &hello[..]].concat();
    rig.conn.client_data(rig.now, &mut rest, &mut rig.pool);
    rig.pump();
    assert!(
        !rig.client.is_handshaking(),
        "the handshake went on after the header"
    );
    assert_eq!(
        rig.conn.proxied_client(),
        Some("192.0.2.7:5555".parse().unwrap())
    );
    rig.client.writer().write_all(b"GET /").expect("write");
    rig.pump();
    assert_eq!(
        rig.upstream,
        b"PROXY TCP4 192.0.2.7 198.51.100.9 5555 443\r\nGET /"
    );
}

#[test]
fn without_a_valid_proxy_header_the_connection_fails_before_tls() {
    let (server, client) = configs(0);
    let mut rig = Rig::new(server.clone(), client);
    rig.conn = Connection::new(
        UnbufferedServerConnection::new(server).expect("server"),
        limits(),
        None,
        rig.now,
    )
    .with_proxy_in();
    let mut hello = Vec::new();
    rig.client.write_tls(&mut hello).expect("hello");
    rig.conn.client_data(rig.now, &mut hello, &mut rig.pool);
    assert!(
        matches!(rig.conn.end(), Some(End::Failed(Failure::ProxyHeader, _))),
        "{:?}",
        rig.conn.end()
    );
    assert!(
        rig.conn.poll_transmit(Side::Client).is_none(),
        "nothing is sent to such a client"
    );
}

#[test]
fn a_send_that_took_part_of_a_buffer_sends_the_rest_first() {
    let mut rig = Rig::connected();
    rig.client.writer().write_all(b"abcdef").expect("write");
    rig.pump();
    rig.upstream.clear();
    rig.client.writer().write_all(b"0123456789").expect("write");
    let mut bytes = Vec::new();
    rig.client.write_tls(&mut bytes).expect("write_tls");
    rig.conn.client_data(rig.now, &mut bytes, &mut rig.pool);
    let buf = rig.conn.poll_transmit(Side::Upstream).expect("bytes");
    assert!(
        rig.conn.poll_transmit(Side::Upstream).is_none(),
        "two sends in flight"
    );
    rig.conn
        .sent(rig.now, Side::Upstream, buf, Ok(4), &mut rig.pool);
    let rest = rig.conn.poll_transmit(Side::Upstream).expect("the rest");
    assert_eq!(rest.pending(), b"456789");
}

#[test]
fn early_data_reaches_the_upstream_before_the_handshake_completes() {
    let (server, client) = configs(16 * 1024);
    // A first connection leaves the client with a ticket.
    let mut first = Rig::new(server.clone(), client.clone());
    first.pump();
    first.client.writer().write_all(b"x").expect("write");
    first.pump();
    first.conn.upstream_data(first.now, b"y", &mut first.pool);
    first.pump();
    assert_eq!(first.client_plaintext(), b"y");

    let mut rig = Rig::new(server, client);
    rig.auto_connect = false;
    let mut early = rig.client.early_data().expect("the client may send 0-RTT");
    early.write_all(b"GET /early").expect("early write");
    // Only the client's first flight: ClientHello and the early data.
    let mut bytes = Vec::new();
    rig.client.write_tls(&mut bytes).expect("write_tls");
    rig.conn.client_data(rig.now, &mut bytes, &mut rig.pool);
    assert_eq!(rig.conn.poll_event(), Some(Event::ConnectUpstream));
    rig.conn.connect_started(rig.now);
    rig.conn.upstream_connected(rig.now, Ok(()), &mut rig.pool);
    let to_upstream = rig.conn.poll_transmit(Side::Upstream).expect("early data");
    assert_eq!(to_upstream.pending(), b"GET /early");
    assert!(
        rig.conn.handshake_took().is_none(),
        "the handshake already completed"
    );
    assert_eq!(rig.conn.early_data_bytes(), 10);
}

#[test]
fn plain_http_or_binary_garbage_first_is_an_error_at_once() {
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0u8..=255).collect::<Vec<u8>>(),
    ] {
        let (server, client) = configs(0);
        let mut rig = Rig::new(server, client);
        let mut bytes = garbage.clone();
        rig.conn.client_data(rig.now, &mut bytes, &mut rig.pool);
        if let Some(alert) = rig.conn.poll_transmit(Side::Client) {
            let n = alert.len();
            rig.conn
                .sent(rig.now, Side::Client, alert, Ok(n), &mut rig.pool);
        }
        assert!(
            matches!(rig.conn.end(), Some(End::Failed(Failure::Handshake, _))),
            "{:?} after {:?}",
            rig.conn.end(),
            &garbage[..8]
        );
    }
}

#[test]
fn records_split_at_every_odd_boundary_arrive_byte_exact() {
    for chunk in [1000, 7001, 16_389, 40_000] {
        let (server, client) = configs(0);
        let mut rig = Rig::new(server, client);
        rig.pump();
        rig.chunk = chunk;
        rig.client.set_buffer_limit(None);
        let data = pattern(300_000);
        rig.client.writer().write_all(&data).expect("write");
        rig.pump();
        assert!(
            rig.upstream == data,
            "chunk {chunk}: {} of {} bytes",
            rig.upstream.len(),
            data.len()
        );
    }
}

// ---- the hello gate ------------------------------------------------------

/// A gate that asks for one lookup of every hello, recording what it saw.
struct AskAlways {
    seen: std::sync::Mutex<Vec<crate::client_hello::HelloInfo>>,
}

impl super::HelloGate for AskAlways {
    fn decide(&self, hello: &crate::client_hello::HelloInfo) -> super::Decision {
        self.seen.lock().expect("lock").push(hello.clone());
        super::Decision {
            tls: None,
            lookup: Some(super::Lookup {
                key: b"the-id".to_vec(),
                take: false,
                budget: Duration::from_millis(5),
            }),
        }
    }
}

fn gated_rig(chunk: usize) -> (Rig, Arc<AskAlways>) {
    let (server, client) = configs(0);
    let mut rig = Rig::new(server, client);
    let gate = Arc::new(AskAlways {
        seen: std::sync::Mutex::new(Vec::new()),
    });
    let conn = std::mem::replace(
        &mut rig.conn,
        Connection::new(
            UnbufferedServerConnection::new(configs(0).0).expect("server"),
            limits(),
            None,
            rig.now,
        ),
    );
    rig.conn = conn.with_gate(gate.clone());
    rig.chunk = chunk;
    (rig, gate)
}

#[test]
fn a_lookup_holds_the_hello_back_from_rustls_until_it_is_answered() {
    let (mut rig, gate) = gated_rig(usize::MAX);
    rig.pump();
    assert_eq!(gate.seen.lock().expect("lock").len(), 1);
    assert!(
        rig.client.is_handshaking(),
        "the server answered before the lookup"
    );
    assert_eq!(
        rig.conn.lookup().map(|l| l.key.as_slice()),
        Some(&b"the-id"[..])
    );
    rig.conn.lookup_done(rig.now, None, &mut rig.pool);
    rig.pump();
    assert!(!rig.client.is_handshaking(), "the handshake did not go on");
    assert!(rig.conn.lookup().is_none());
}

#[test]
fn an_unanswered_lookup_ends_at_its_budget_and_the_handshake_goes_on() {
    let (mut rig, _) = gated_rig(usize::MAX);
    rig.pump();
    let deadline = rig.conn.poll_timeout().expect("a deadline");
    assert!(deadline <= rig.now + Duration::from_millis(5));
    rig.now = deadline;
    rig.conn.handle_timeout(rig.now, &mut rig.pool);
    rig.pump();
    assert!(!rig.client.is_handshaking());
    assert_eq!(rig.conn.end(), None);
    // A late answer changes nothing.
    rig.conn.lookup_done(rig.now, None, &mut rig.pool);
    assert_eq!(rig.conn.end(), None);
}

#[test]
fn a_hello_split_over_receives_is_gathered_before_the_gate_reads_it() {
    let (mut rig, gate) = gated_rig(7);
    rig.pump();
    let seen = gate.seen.lock().expect("lock").clone();
    assert_eq!(
        seen.len(),
        1,
        "the gate must decide once, on the whole hello"
    );
    assert_eq!(seen[0].server_name.as_deref(), Some("localhost"));
    rig.conn.lookup_done(rig.now, None, &mut rig.pool);
    rig.pump();
    assert!(!rig.client.is_handshaking());
}

#[test]
fn bytes_that_are_not_a_tls_record_go_to_rustls_at_once_through_the_gate() {
    let (mut rig, gate) = gated_rig(usize::MAX);
    let mut http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    rig.conn.client_data(rig.now, &mut http, &mut rig.pool);
    assert!(
        gate.seen.lock().expect("lock").is_empty(),
        "the gate read a non-TLS record"
    );
    assert!(rig.conn.lookup().is_none());
    let alert = rig.conn.poll_transmit(Side::Client);
    assert!(
        alert.is_some() || matches!(rig.conn.end(), Some(End::Failed(Failure::Handshake, _))),
        "rustls must refuse the bytes at once"
    );
}
