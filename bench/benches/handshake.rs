//! The in-memory handshake floor: µs per complete TLS handshake between a
//! rustls client and a server configured exactly as tlsfront configures
//! it, connected by two in-memory byte buffers (no sockets, no io_uring,
//! no upstream). This is the CPU cost of the TLS work itself, the floor
//! that each socket handshake of `tlsload` against tlsfront is compared
//! with.
//!
//! Server: `tlsfront::tls::server_config(&Config::default(), sessions,
//! tickets)`, i.e. the default self-signed ECDSA P-256 certificate for
//! `localhost`, TLS 1.2 and 1.3, two TLS 1.3 tickets per connection, with a
//! real `SessionCache` (64 MiB file) and, unless the mode turns tickets
//! off, a real `TicketKeyRing` (3 keys, 1 h, random), both in a temporary
//! directory under `$TLSFRONT_BENCH_DIR`, else /dev/shm when it exists,
//! else the temporary directory. The calling thread is worker 0, as in a
//! tlsfront worker.
//!
//! Client: as `tlsload --insecure` (`bench/src/bin/tlsload.rs`): aws-lc-rs,
//! groups X25519 (then P-256, never used: every handshake is checked to
//! have used X25519), suites TLS13_AES_128_GCM_SHA256 /
//! ECDHE-ECDSA-AES128-GCM-SHA256, one protocol version per mode, SNI
//! `localhost`, no certificate or signature verification (the cheapest
//! client; the server's work is unchanged).
//!
//! Modes (as `tlsload` and `bench/compare.sh` name them):
//! - `full12`, `full13`: no resumption offered (server with cache + ring);
//! - `resume-id12`: tickets off (server: ring `None`, as
//!   `tickets.enabled = 0`), client `Tls12Resumption::SessionIdOnly`;
//! - `resume-ticket12`: TLS 1.2 stateless ticket (server with the ring);
//! - `resume13`: TLS 1.3 PSK with a stateless ticket (server with the ring);
//! - `resume13-stateful`: ring `None`: rustls then issues TLS 1.3 tickets
//!   that are IDs in the session cache (single use, `take`).
//!
//! Every resumption mode does one untimed full handshake first, then
//! checks that every measured handshake resumed (client and server).
//!
//! One handshake is: `ClientConnection::new` and `ServerConnection::new`,
//! flights moved through the buffers until neither side has anything to
//! send (so the TLS 1.3 NewSessionTickets reach the client, as `tlsload`
//! reads them), the client's close_notify sent and processed by the server,
//! both connections dropped. Both ends run in the calling thread, so:
//! - `complete/<mode>`: wall time of it all = client + server CPU together;
//! - `server/<mode>`: only the server's calls (`ServerConnection::new`,
//!   `read_tls`, `process_new_packets`, `write_tls`, drop), summed with one
//!   `Instant` pair per server turn (about 3-5 turns per handshake, ~25 ns
//!   each).
//!
//! Run: `cargo bench -p tlsfront-bench --bench handshake`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::client::{ClientSessionMemoryCache, Resumption, Tls12Resumption};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use tlsfront::config::Config;
use tlsfront::metrics::set_current_worker;
use tlsfront::session_cache::SessionCache;
use tlsfront::tickets::{KeySource, TicketKeyRing};
use tlsfront_bench::{accept_anything_config, bench_dir, Mode};

// The allocator of the tlsfront binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The server has the ticket ring (tlsfront's default) unless the mode is
/// about the cache alone.
fn server_tickets(mode: Mode) -> bool {
    !matches!(mode, Mode::ResumeId12 | Mode::Resume13Stateful)
}

// ------------------------------------------------------------------ client

fn client_config(mode: Mode) -> Arc<ClientConfig> {
    // The same client crypto as tlsload.
    let mut config = accept_anything_config(mode.tls13()).expect("client versions");
    config.resumption = match mode {
        Mode::Full12 | Mode::Full13 => Resumption::disabled(),
        Mode::ResumeId12 => Resumption::store(Arc::new(ClientSessionMemoryCache::new(4)))
            .tls12_resumption(Tls12Resumption::SessionIdOnly),
        _ => Resumption::store(Arc::new(ClientSessionMemoryCache::new(4)))
            .tls12_resumption(Tls12Resumption::SessionIdOrTickets),
    };
    Arc::new(config)
}

// ------------------------------------------------------------------ server

struct Servers {
    with_tickets: Arc<ServerConfig>,
    without_tickets: Arc<ServerConfig>,
    _dir: tempfile::TempDir,
}

fn servers() -> Servers {
    let dir = bench_dir();
    let config = Config::default();
    let (cache, _) = SessionCache::open(
        &dir.path().join("session.cache"),
        config.cache_size.0,
        config.cache_timeout.0.as_secs(),
        1,
    )
    .expect("open the session cache");
    let cache = Arc::new(cache);
    let (ring, _) = TicketKeyRing::open(
        &dir.path().join("ring.tickets"),
        config.ticket_keys as usize,
        config.ticket_rotate.0.as_secs(),
        KeySource::Random,
        1,
    )
    .expect("open the ticket ring");
    let (with_tickets, _) =
        tlsfront::tls::server_config(&config, Some(Arc::clone(&cache)), Some(Arc::new(ring)))
            .expect("server config");
    let (without_tickets, _) =
        tlsfront::tls::server_config(&config, Some(cache), None).expect("server config");
    Servers {
        with_tickets,
        without_tickets,
        _dir: dir,
    }
}

// ------------------------------------------------------------------ one handshake

/// Feeds `buf` to the server, lets it process, and collects what it
/// sends into `out`.
fn server_turn(server: &mut ServerConnection, buf: &mut Vec<u8>, out: &mut Vec<u8>) {
    let mut rd = &buf[..];
    while !rd.is_empty() {
        server.read_tls(&mut rd).expect("server read_tls");
        server.process_new_packets().expect("server process");
    }
    buf.clear();
    while server.wants_write() {
        server.write_tls(out).expect("server write_tls");
    }
}

fn client_turn(client: &mut ClientConnection, buf: &mut Vec<u8>) {
    let mut rd = &buf[..];
    while !rd.is_empty() {
        client.read_tls(&mut rd).expect("client read_tls");
        client.process_new_packets().expect("client process");
    }
    buf.clear();
}

/// Passes records between `client` and `server` until neither has any to
/// send; returns the time spent in the server's calls.
fn exchange(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
    bufs: &mut (Vec<u8>, Vec<u8>),
) -> Duration {
    let (c2s, s2c) = bufs;
    let mut in_server = Duration::ZERO;
    loop {
        while client.wants_write() {
            client.write_tls(c2s).expect("client write_tls");
        }
        if c2s.is_empty() && s2c.is_empty() {
            break;
        }
        if !c2s.is_empty() {
            let t = Instant::now();
            server_turn(server, c2s, s2c);
            in_server += t.elapsed();
        }
        if !s2c.is_empty() {
            client_turn(client, s2c);
        }
    }
    in_server
}

/// One handshake; returns the time spent in the server's calls.
fn handshake(
    mode: Mode,
    client_config: &Arc<ClientConfig>,
    server_config: &Arc<ServerConfig>,
    name: &ServerName<'static>,
    bufs: &mut (Vec<u8>, Vec<u8>),
) -> Duration {
    let mut client =
        ClientConnection::new(Arc::clone(client_config), name.clone()).expect("client");
    let t = Instant::now();
    let mut server = ServerConnection::new(Arc::clone(server_config)).expect("server");
    let mut in_server = t.elapsed() + exchange(&mut client, &mut server, bufs);
    assert!(!client.is_handshaking() && !server.is_handshaking());
    let want = if mode.resumes() {
        HandshakeKind::Resumed
    } else {
        HandshakeKind::Full
    };
    assert_eq!(
        client.handshake_kind(),
        Some(want),
        "{} client",
        mode.name()
    );
    assert_eq!(
        server.handshake_kind(),
        Some(want),
        "{} server",
        mode.name()
    );
    assert_eq!(
        client.negotiated_key_exchange_group().map(|g| g.name()),
        if mode.tls13() || !mode.resumes() {
            Some(rustls::NamedGroup::X25519)
        } else {
            // A TLS 1.2 resumption exchanges no key.
            None
        },
        "{}",
        mode.name()
    );
    let (c2s, s2c) = bufs;
    client.send_close_notify();
    while client.wants_write() {
        client.write_tls(c2s).expect("client write_tls");
    }
    let t = Instant::now();
    server_turn(&mut server, c2s, s2c);
    drop(black_box(server));
    in_server += t.elapsed();
    s2c.clear();
    drop(black_box(client));
    in_server
}

#[derive(Debug, Clone, Copy)]
enum Clock {
    /// Wall time of the whole handshake (client + server).
    Complete,
    /// The server's calls only.
    Server,
}

fn handshakes(c: &mut Criterion) {
    set_current_worker(0);
    let servers = servers();
    let name = ServerName::try_from("localhost").expect("server name");
    let mut bufs = (Vec::with_capacity(8192), Vec::with_capacity(8192));
    for (clock, group_name) in [(Clock::Complete, "complete"), (Clock::Server, "server")] {
        let mut group = c.benchmark_group(group_name);
        // Every mode but `plain`: no TLS, nothing to measure here.
        for mode in Mode::ALL.into_iter().filter(|&m| m != Mode::Plain) {
            let client = client_config(mode);
            let server = if server_tickets(mode) {
                &servers.with_tickets
            } else {
                &servers.without_tickets
            };
            if mode.resumes() {
                // The full handshake that gives the client its session.
                full_then_store(mode, &client, server, &name, &mut bufs);
            }
            group.bench_function(mode.name(), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    let mut in_server = Duration::ZERO;
                    for _ in 0..iters {
                        in_server += handshake(mode, &client, server, &name, &mut bufs);
                    }
                    match clock {
                        Clock::Complete => start.elapsed(),
                        Clock::Server => in_server,
                    }
                })
            });
        }
        group.finish();
    }
}

/// The untimed full handshake that stocks the client's session store.
fn full_then_store(
    mode: Mode,
    client_config: &Arc<ClientConfig>,
    server_config: &Arc<ServerConfig>,
    name: &ServerName<'static>,
    bufs: &mut (Vec<u8>, Vec<u8>),
) {
    let mut client =
        ClientConnection::new(Arc::clone(client_config), name.clone()).expect("client");
    let mut server = ServerConnection::new(Arc::clone(server_config)).expect("server");
    exchange(&mut client, &mut server, bufs);
    assert_eq!(
        client.handshake_kind(),
        Some(HandshakeKind::Full),
        "{} first handshake",
        mode.name()
    );
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = handshakes
}
criterion_main!(benches);
