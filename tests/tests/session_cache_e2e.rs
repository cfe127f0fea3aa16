//! The shared session cache seen from outside: real tlsfront processes, real
//! clients (rustls and openssl s_client), resumption across workers, across a
//! restart, single-use TLS 1.3 tickets, and the size of real sessions.
//!
//! Every server here runs with `tickets.tls13_mode = stateful` (no ticket-key
//! ring, rustls's ticketer off), so that all resumption goes through the
//! cache: TLS 1.2 by session ID (`get`), TLS 1.3 by single-use 32-byte ticket
//! IDs (`take`). Stateless tickets, sealed by the ring, never touch the cache.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tlsfront_tests::openssl_client::{self, lines_starting};
use tlsfront_tests::*;

/// Resumption through the session cache only (see the module comment).
const STATEFUL: (&str, &str) = ("tickets.tls13_mode", "stateful");

/// `openssl s_client` against `port` with SNI `localhost` (the harness's).
fn s_client(port: u16, args: &[&str], stdin: &[u8]) -> CmdOutput {
    openssl_client::s_client(port, "localhost", args, stdin)
}

#[test]
fn tls12_session_ids_resume_on_both_workers_and_are_never_oversize() {
    const N: u64 = 60;
    let fe = Frontend::start(&[("worker.count", "2"), ("cache.size", "1m"), STATEFUL]);
    let cfg = resuming_client_config(&ClientSpec::new(Trust::AnyCert).versions(Versions::Tls12));
    let first = visit(fe.addr(), cfg.clone(), "localhost")
        .unwrap_or_else(|e| panic!("first handshake: {e}\n{}", fe.output()));
    assert!(
        !first.resumed,
        "the first connection cannot resume: {first:?}"
    );
    assert!(first.http_200, "{first:?}\n{}", fe.output());
    let mut not_resumed = Vec::new();
    // Resumptions per worker as the kernel saw them (the CPU that served
    // each connection).
    let cpus = fe.worker_cpus();
    let mut seen = vec![0u64; cpus.len()];
    for i in 0..N {
        let v = visit(fe.addr(), cfg.clone(), "localhost")
            .unwrap_or_else(|e| panic!("reconnect {i}: {e}\n{}", fe.output()));
        seen[fe.kernel_worker(&cpus, &v)] += u64::from(v.resumed);
        assert_eq!(v.version, Some(rustls::ProtocolVersion::TLSv1_2), "{v:?}");
        assert!(v.http_200, "reconnect {i}: {v:?}\n{}", fe.output());
        if !v.resumed {
            not_resumed.push(i);
        }
    }
    assert!(
        not_resumed.is_empty(),
        "reconnects that did not resume: {not_resumed:?}\n{}",
        fe.output()
    );

    let (stats, ok) = fe.wait_stats(Duration::from_secs(5), |s| s.total.handshakes > N);
    assert!(ok, "handshakes never reached {}: {stats:?}", N + 1);
    let resumed = stats.per_worker("resumed_tls12");
    eprintln!(
        "resumed_tls12 per worker {resumed:?}, cache_hits {:?}, cache_inserts {:?}",
        stats.per_worker("cache_hits"),
        stats.per_worker("cache_inserts")
    );
    assert_eq!(
        resumed.iter().sum::<u64>(),
        N,
        "resumed_tls12 per worker: {stats:?}"
    );
    assert!(
        seen.iter().all(|&r| r > 0),
        "a worker resumed no session as the kernel saw it (it should find sessions the other one stored): {seen:?}"
    );
    assert_eq!(
        resumed, seen,
        "resumed_tls12 per worker vs the resumptions the kernel saw each worker serve"
    );
    assert_eq!(stats.total.get("cache_hits"), N, "{stats:?}");
    assert_eq!(
        stats.total.get("cache_oversize"),
        0,
        "an ordinary TLS 1.2 session did not fit a slot: {stats:?}"
    );
}

#[test]
fn openssl_s_client_reconnect_reuses_the_tls12_session_id_five_times() {
    let fe = Frontend::start(&[("worker.count", "2"), ("cache.size", "1m"), STATEFUL]);
    let out = s_client(fe.port, &["-tls1_2", "-no_ticket", "-reconnect"], b"");
    let ctx = || format!("{}\n{}", out.describe(), fe.output());
    assert_eq!(lines_starting(&out, "New,"), 1, "{}", ctx());
    assert_eq!(lines_starting(&out, "Reused,"), 5, "{}", ctx());
    let (stats, ok) = fe.wait_stats(Duration::from_secs(5), |s| s.total.handshakes >= 6);
    assert!(ok, "{stats:?}");
    assert_eq!(stats.total.get("resumed_tls12"), 5, "{stats:?}");
}

#[test]
fn tls13_stateful_tickets_resume_including_on_the_other_worker() {
    const PAIRS: usize = 40;
    let fe = Frontend::start(&[("worker.count", "2"), ("cache.size", "1m"), STATEFUL]);
    let spec = ClientSpec::new(Trust::AnyCert).versions(Versions::Tls13);
    let cpus = fe.worker_cpus();
    let mut before = fe.stats();
    let mut handshakes = before.total.handshakes;
    // (worker of the full handshake, worker of the resumption), per pair.
    let mut pairs = Vec::new();
    let next_stats = |handshakes: u64| {
        let (s, ok) = fe.wait_stats(Duration::from_secs(5), |s| s.total.handshakes >= handshakes);
        assert!(ok, "handshakes never reached {handshakes}: {s:?}");
        s
    };
    for i in 0..PAIRS {
        let pair = format!("pair {i}");
        // A client that remembers nothing: the full handshake gives it
        // tickets (stored by the server with `put`), the next connection
        // redeems one (`take`).
        let cfg = resuming_client_config(&spec);
        let full = fe.full_visit(cfg.clone(), &pair);
        handshakes += 1;
        let mid = next_stats(handshakes);
        let issuer = single_worker(&before, &mid, "handshakes");
        fe.assert_served_by(&cpus, &full, issuer, &pair, "the full handshake");
        let again = visit(fe.addr(), cfg, "localhost")
            .unwrap_or_else(|e| panic!("pair {i}, resumption: {e}\n{}", fe.output()));
        assert_eq!(again.version, Some(rustls::ProtocolVersion::TLSv1_3));
        assert!(
            again.resumed,
            "pair {i}: the ticket from worker {issuer} did not resume: {again:?}\n{}",
            fe.output()
        );
        assert!(again.http_200, "pair {i}: {again:?}");
        handshakes += 1;
        let after = next_stats(handshakes);
        let redeemer = single_worker(&mid, &after, "resumed_tls13");
        fe.assert_served_by(&cpus, &again, redeemer, &pair, "the resumption");
        pairs.push((issuer, redeemer));
        before = after;
    }
    let crossed = pairs.iter().filter(|(a, b)| a != b).count();
    let resumed = before.per_worker("resumed_tls13");
    eprintln!(
        "{PAIRS} pairs: {crossed} resumed on the other worker; resumed_tls13 per worker {resumed:?}"
    );
    assert_eq!(resumed.iter().sum::<u64>(), PAIRS as u64, "{before:?}");
    assert!(
        resumed.iter().all(|&r| r > 0),
        "a worker resumed no TLS 1.3 session: {resumed:?}"
    );
    assert!(
        crossed > 0,
        "no ticket was redeemed on the other worker than the one that issued it: {pairs:?}"
    );
    assert_eq!(before.total.get("cache_oversize"), 0, "{before:?}");
}

#[test]
fn a_replayed_tls13_ticket_gets_a_full_handshake() {
    let fe = Frontend::start(&[("worker.count", "2"), ("cache.size", "1m"), STATEFUL]);
    let dir = temp_dir();
    let sess = dir.path().join("tls13.session");
    let sess_arg = sess.to_str().unwrap();
    // -ign_eof: read until the server closes, so the tickets sent after the
    // handshake (before the HTTP response) are received and saved.
    let first = s_client(
        fe.port,
        &["-tls1_3", "-ign_eof", "-sess_out", sess_arg],
        b"GET / HTTP/1.0\r\n\r\n",
    );
    assert_eq!(lines_starting(&first, "New,"), 1, "{}", first.describe());
    assert!(
        first.stdout.contains("New Session Ticket arrived"),
        "no ticket received\n{}\n{}",
        first.describe(),
        fe.output()
    );
    assert!(
        sess.is_file(),
        "-sess_out wrote nothing\n{}",
        first.describe()
    );

    let s0 = fe
        .wait_stats(Duration::from_secs(5), |s| s.total.handshakes >= 1)
        .0;
    let redeem = s_client(fe.port, &["-tls1_3", "-sess_in", sess_arg], b"");
    assert_eq!(
        lines_starting(&redeem, "Reused,"),
        1,
        "the saved ticket did not resume\n{}\n{}",
        redeem.describe(),
        fe.output()
    );
    let s1 = fe
        .wait_stats(Duration::from_secs(5), |s| s.total.handshakes >= 2)
        .0;
    let replay = s_client(fe.port, &["-tls1_3", "-sess_in", sess_arg], b"");
    assert_eq!(
        lines_starting(&replay, "New,"),
        1,
        "a ticket already redeemed resumed again (replay)\n{}\n{}",
        replay.describe(),
        fe.output()
    );
    assert_eq!(
        lines_starting(&replay, "Reused,"),
        0,
        "{}",
        replay.describe()
    );
    let s2 = fe
        .wait_stats(Duration::from_secs(5), |s| s.total.handshakes >= 3)
        .0;

    let moved = |a: &Stats, b: &Stats, name: &str| b.total.get(name) - a.total.get(name);
    let report = format!("{s0:?}\n{s1:?}\n{s2:?}");
    assert_eq!(moved(&s0, &s1, "cache_hits"), 1, "redeeming: {report}");
    assert_eq!(moved(&s0, &s1, "cache_misses"), 0, "redeeming: {report}");
    assert_eq!(moved(&s0, &s1, "resumed_tls13"), 1, "redeeming: {report}");
    assert_eq!(moved(&s1, &s2, "cache_hits"), 0, "replaying: {report}");
    assert_eq!(moved(&s1, &s2, "cache_misses"), 1, "replaying: {report}");
    assert_eq!(moved(&s1, &s2, "resumed_tls13"), 0, "replaying: {report}");
}

#[test]
fn a_tls12_session_survives_a_restart_on_the_same_cache_file() {
    let dir = temp_dir();
    let cache = dir.path().join("kept.cache");
    let cache_arg = cache.to_str().unwrap();
    let sess = dir.path().join("tls12.session");
    let sess_arg = sess.to_str().unwrap();
    let opts = [
        ("cache.path", cache_arg),
        ("cache.size", "1m"),
        ("worker.count", "1"),
        STATEFUL,
    ];

    let before = Frontend::start(&opts);
    assert!(
        before.stdout().contains("; new)"),
        "a fresh cache file is announced as new:\n{}",
        before.output()
    );
    let first = s_client(
        before.port,
        &["-tls1_2", "-no_ticket", "-sess_out", sess_arg],
        b"",
    );
    assert_eq!(lines_starting(&first, "New,"), 1, "{}", first.describe());
    drop(before); // SIGKILL: no chance to clean anything up

    let after = Frontend::start(&opts);
    assert!(
        after.stdout().contains("sessions kept from before"),
        "the restarted process did not reuse the cache file:\n{}",
        after.output()
    );
    let again = s_client(
        after.port,
        &["-tls1_2", "-no_ticket", "-sess_in", sess_arg],
        b"",
    );
    assert_eq!(
        lines_starting(&again, "Reused,"),
        1,
        "the session from before the restart did not resume\n{}\n{}",
        again.describe(),
        after.output()
    );
    let (stats, ok) = after.wait_stats(Duration::from_secs(5), |s| s.total.handshakes >= 1);
    assert!(ok, "{stats:?}");
    assert_eq!(stats.total.get("resumed_tls12"), 1, "{stats:?}");
}

#[test]
fn with_the_cache_disabled_tls12_reconnects_do_not_resume() {
    let fe = Frontend::start(&[
        ("worker.count", "2"),
        ("cache.enabled", "0"),
        // Nothing else that could resume either: no ticket-key ring.
        ("tickets.enabled", "0"),
    ]);
    assert!(
        fe.stdout().contains("session cache  off"),
        "{}",
        fe.output()
    );
    let out = s_client(fe.port, &["-tls1_2", "-no_ticket", "-reconnect"], b"");
    let ctx = || format!("{}\n{}", out.describe(), fe.output());
    assert_eq!(lines_starting(&out, "Reused,"), 0, "{}", ctx());
    assert_eq!(lines_starting(&out, "New,"), 6, "{}", ctx());
    let (stats, ok) = fe.wait_stats(Duration::from_secs(5), |s| s.total.handshakes >= 6);
    assert!(ok, "{stats:?}");
    assert_eq!(stats.total.get("resumed_tls12"), 0, "{stats:?}");
}

// ---------------------------------------------------------------------------
// The size of real sessions, measured in process
// ---------------------------------------------------------------------------

/// A session store that records the key and value length of every `put`
/// and passes everything on to a real [`SessionCache`].
#[derive(Debug)]
struct Recorder {
    cache: tlsfront::session_cache::SessionCache,
    puts: Mutex<Vec<(usize, usize)>>,
}

impl rustls::server::StoresServerSessions for Recorder {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.puts.lock().unwrap().push((key.len(), value.len()));
        self.cache.put_local(&key, &value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache.get_local(key)
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache.take_local(key)
    }
    fn can_cache(&self) -> bool {
        true
    }
}

/// Runs a client and a server connection against each other in memory until
/// both are done handshaking and have nothing left to send (so TLS 1.3
/// tickets reach the client).
fn handshake_in_memory(
    client: &mut rustls::ClientConnection,
    server: &mut rustls::ServerConnection,
) {
    for _ in 0..100 {
        let mut moved = false;
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            moved = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets().expect("server");
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            moved = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets().expect("client");
        }
        if !moved && !client.is_handshaking() && !server.is_handshaking() {
            return;
        }
    }
    panic!("in-memory handshake did not settle");
}

/// Largest (key, value) put by the server for a full handshake then a
/// resumption with `versions`, `server_name` and `alpn`, through tlsfront's
/// own server configuration; asserts that the second handshake resumed.
fn measure(dir: &Path, versions: Versions, server_name: &str, alpn: &[&str]) -> (usize, usize) {
    let (cache, _) = tlsfront::session_cache::SessionCache::open(
        &dir.join(format!(
            "{versions:?}-{}-{}.cache",
            server_name.len(),
            alpn.len()
        )),
        1 << 20,
        300,
        1,
    )
    .expect("open cache");
    let recorder = Arc::new(Recorder {
        cache,
        puts: Mutex::new(Vec::new()),
    });
    let mut config = tlsfront::config::Config::default();
    // No ticket-key ring is passed below: rustls's ticketer stays off, as in
    // tlsfront's stateful mode.
    config
        .set("tickets.tls13_mode", "stateful")
        .expect("tickets.tls13_mode");
    for p in alpn {
        config.set("tls.alpn", p).expect("tls.alpn");
    }
    let (server, _) = tlsfront::tls::server_config(&config, None, None).expect("server config");
    let mut server = (*server).clone();
    server.session_storage = recorder.clone();
    let server = Arc::new(server);
    let client = resuming_client_config(
        &ClientSpec::new(Trust::AnyCert)
            .versions(versions)
            .alpn(alpn),
    );
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).expect("name");
    for round in 0..2 {
        let mut c = rustls::ClientConnection::new(client.clone(), name.clone()).unwrap();
        let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
        handshake_in_memory(&mut c, &mut s);
        let resumed = s.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        assert_eq!(
            resumed,
            round == 1,
            "{versions:?} round {round}: handshake kind {:?}",
            s.handshake_kind()
        );
    }
    let puts = recorder.puts.lock().unwrap().clone();
    assert!(
        !puts.is_empty(),
        "{versions:?}: the server stored no session"
    );
    *puts.iter().max_by_key(|(k, v)| k + v).unwrap()
}

#[test]
fn ordinary_tls12_and_tls13_sessions_fit_a_slot() {
    use tlsfront::session_cache::ENTRY_BYTES as DATA_BYTES;
    let dir = temp_dir();
    // The longest DNS name there is: 253 characters.
    let long_name = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
    assert_eq!(long_name.len(), 253);
    let cases: [(Versions, &str, &[&str]); 4] = [
        (Versions::Tls12, "localhost", &[]),
        (Versions::Tls13, "localhost", &[]),
        (Versions::Tls12, &long_name, &["http/1.1"]),
        (Versions::Tls13, &long_name, &["http/1.1"]),
    ];
    let mut report = Vec::new();
    for (versions, name, alpn) in cases {
        let (key, value) = measure(dir.path(), versions, name, alpn);
        let line = format!(
            "session size {versions:?}, SNI of {} bytes, ALPN {alpn:?}: key {key} + value {value} = {} of {DATA_BYTES} bytes per slot",
            name.len(),
            key + value
        );
        eprintln!("{line}");
        report.push((line, key + value));
    }
    for (line, total) in &report {
        assert!(*total <= DATA_BYTES, "does not fit a slot: {line}");
    }
}
