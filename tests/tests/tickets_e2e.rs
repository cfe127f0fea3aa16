//! The ticket-key ring seen from outside: real tlsfront processes, real
//! clients (rustls with a resumption store, openssl s_client with
//! `-sess_out`/`-sess_in`).
//!
//! - a ticket sealed by one worker opens on the other (TLS 1.2, TLS 1.3);
//! - a ticket outlives one rotation, and once its key has left the ring it
//!   gets a full handshake, not an error;
//! - a tampered ticket gets a full handshake and counts a decrypt failure;
//! - `random` keys survive a restart on the same ring file;
//! - processes sharing a `file:` secret open each other's tickets, another
//!   secret does not;
//! - resumptions at full speed across several rotations never fail;
//! - 0-RTT (stateful TLS 1.3) reaches the upstream exactly once, and a
//!   replay of the whole client flight gets no early data through.
//!
//! That a stateful TLS 1.3 ticket is single-use (`-sess_in` twice: `Reused`
//! then `New`) is covered by `session_cache_e2e.rs`
//! (`a_replayed_tls13_ticket_gets_a_full_handshake`).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::UnixTime;
use tlsfront_tests::openssl_client::{self, lines_starting};
use tlsfront_tests::*;

const S_CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
const STATS_WAIT: Duration = Duration::from_secs(5);
/// The ticket counters that say a ticket was opened, whatever its key's age.
const DECRYPTED: [&str; 4] = [
    "tickets_decrypted_current",
    "tickets_decrypted_previous",
    "tickets_decrypted_older",
    "tickets_decrypted_next",
];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `openssl s_client` against `port` with SNI `localhost` (the harness's).
fn s_client(port: u16, args: &[&str], stdin: &[u8]) -> CmdOutput {
    openssl_client::s_client(port, "localhost", args, stdin)
}

/// A full handshake with s_client that saves the session (with its ticket)
/// to `sess`. `-ign_eof` with a request: s_client reads until the built-in
/// upstream closes, so the TLS 1.3 tickets sent after the handshake arrive
/// before the session is written.
fn s_client_save_session(fe: &Frontend, version_flag: &str, sess: &Path) -> CmdOutput {
    let out = s_client(
        fe.port,
        &[
            version_flag,
            "-ign_eof",
            "-sess_out",
            sess.to_str().unwrap(),
        ],
        b"GET / HTTP/1.0\r\n\r\n",
    );
    assert_eq!(
        lines_starting(&out, "New,"),
        1,
        "s_client {version_flag} -sess_out: no full handshake\n{}\n{}",
        out.describe(),
        fe.output()
    );
    assert!(
        out.stdout.contains("HTTP/1.1 200"),
        "s_client {version_flag}: no HTTP 200\n{}\n{}",
        out.describe(),
        fe.output()
    );
    assert!(
        sess.is_file(),
        "s_client {version_flag} -sess_out wrote nothing\n{}",
        out.describe()
    );
    out
}

/// s_client offering the session saved in `sess`; returns its output and
/// whether it said `Reused,` (else it must have said `New,`).
fn s_client_resume(port: u16, version_flag: &str, sess: &Path) -> (bool, CmdOutput) {
    let out = s_client(
        port,
        &[version_flag, "-sess_in", sess.to_str().unwrap()],
        b"",
    );
    let reused = lines_starting(&out, "Reused,");
    let new = lines_starting(&out, "New,");
    assert_eq!(
        reused + new,
        1,
        "s_client {version_flag} -sess_in: neither New nor Reused (handshake failed?)\n{}",
        out.describe()
    );
    (reused == 1, out)
}

/// How much the total of counter `name` moved.
fn moved(before: &Stats, after: &Stats, name: &str) -> u64 {
    after.total.get(name) - before.total.get(name)
}

/// Tickets opened (with any key of the ring), per worker, between two stats.
fn decrypted_diff(before: &Stats, after: &Stats) -> Vec<u64> {
    let mut sum = vec![0; after.workers.len()];
    for name in DECRYPTED {
        for (s, d) in sum.iter_mut().zip(worker_diff(before, after, name)) {
            *s += d;
        }
    }
    sum
}

/// Stats once `handshakes` reached `n` (panics after [`STATS_WAIT`]).
fn stats_after_handshakes(fe: &Frontend, n: u64) -> Stats {
    let (s, ok) = fe.wait_stats(STATS_WAIT, |s| s.total.handshakes >= n);
    assert!(ok, "handshakes never reached {n}: {s:?}\n{}", fe.output());
    s
}

/// The ticket counters of every worker and the total, for messages.
fn ticket_counters(s: &Stats) -> String {
    let names = [
        "handshakes",
        "handshake_errors",
        "resumed_tls12",
        "resumed_tls13",
        "tickets_issued",
        "tickets_decrypted_current",
        "tickets_decrypted_previous",
        "tickets_decrypted_older",
        "tickets_decrypted_next",
        "tickets_decrypt_failures",
        "tickets_rotations",
    ];
    names
        .iter()
        .map(|n| {
            let v = s.total.all.get(*n).copied();
            let per: Vec<Option<u64>> = s.workers.iter().map(|w| w.all.get(*n).copied()).collect();
            format!("{n}={v:?} {per:?}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Seconds since the unix epoch, as a float.
fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Sleeps until unix time `t` (seconds).
fn sleep_until_unix(t: f64) {
    let now = unix_now_f64();
    if t > now {
        thread::sleep(Duration::from_secs_f64(t - now));
    }
}

/// Sleeps until `offset` seconds after the next multiple of `period` (in
/// unix time: tlsfront's epochs are `floor(unix_time / tickets.rotate_interval)`), and
/// returns that multiple.
fn align_to_epoch(period: u64, offset: f64) -> f64 {
    let now = unix_now_f64();
    let boundary = ((now / period as f64).floor() + 1.0) * period as f64;
    sleep_until_unix(boundary + offset);
    boundary
}

/// A client clock that runs `lag` milliseconds behind the real one, so that
/// the client still offers a ticket its lifetime hint says is over (and the
/// server, not the client, decides).
#[derive(Debug, Default)]
struct LaggingClock {
    lag_ms: AtomicU64,
}

impl rustls::time_provider::TimeProvider for LaggingClock {
    fn current_time(&self) -> Option<UnixTime> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        let lag = Duration::from_millis(self.lag_ms.load(Ordering::Relaxed));
        Some(UnixTime::since_unix_epoch(now.saturating_sub(lag)))
    }
}

/// A resuming client config (its own session store) on `clock`.
fn resuming_config_on(spec: &ClientSpec, clock: Arc<LaggingClock>) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*resuming_client_config(spec)).clone();
    cfg.time_provider = clock;
    Arc::new(cfg)
}

/// The `TLS session ticket:` hex dump of `openssl sess_id -text`.
fn session_ticket(sess: &Path) -> Vec<u8> {
    let mut cmd = tlsfront_tests::prereq::tool("openssl");
    cmd.args(["sess_id", "-noout", "-text", "-in"]).arg(sess);
    let out = run_cmd(cmd, b"", S_CLIENT_TIMEOUT);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let mut ticket = Vec::new();
    let mut lines = out
        .stdout
        .lines()
        .skip_while(|l| !l.contains("TLS session ticket:"));
    lines.next();
    for line in lines {
        // "    0000 - 32 b7 58 99 2d 7c 90 32-d2 71 ba ab 22 ff b1 f3   2.X.-|.2.q..\"..."
        let Some((offset, rest)) = line.trim_start().split_once(" - ") else {
            break;
        };
        if offset.len() != 4 || !offset.chars().all(|c| c.is_ascii_hexdigit()) {
            break;
        }
        let hex = rest.split("   ").next().unwrap_or("");
        for byte in hex.split([' ', '-']).filter(|s| !s.is_empty()) {
            ticket.push(u8::from_str_radix(byte, 16).expect("hex byte in the ticket dump"));
        }
    }
    assert!(
        ticket.len() >= 16 + 12 + 16,
        "no ticket (or a short one: {} bytes) in the session of {}\n{}",
        ticket.len(),
        sess.display(),
        out.stdout
    );
    ticket
}

/// Writes to `out` the session of `sess` with one bit flipped in the middle
/// of its ticket's ciphertext (past the 16-byte key name and 12-byte
/// nonce). Returns the ticket before the change.
///
/// The ticket is changed in the client's saved session, not on the wire:
/// a relay that changed the ClientHello would break the handshake
/// transcript (the Finished messages would not match), so the server would
/// fail the handshake whatever it did with the ticket.
fn tamper_session_ticket(sess: &Path, out: &Path) -> Vec<u8> {
    let ticket = session_ticket(sess);
    let der = out.with_extension("der");
    let convert = openssl_client::sess_id_convert;
    convert(&["-outform", "DER"], sess, &der);
    let mut bytes = std::fs::read(&der).unwrap();
    let at = bytes
        .windows(ticket.len())
        .position(|w| w == ticket.as_slice())
        .expect("the ticket bytes in the DER session");
    let middle = at + 16 + 12 + (ticket.len() - 16 - 12) / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&der, &bytes).unwrap();
    convert(&["-inform", "DER"], &der, out);
    let changed = session_ticket(out);
    assert_eq!(changed.len(), ticket.len());
    assert_ne!(changed, ticket, "the ticket was not changed");
    ticket
}

/// What one upstream connection received, and whether it ended (EOF).
type Recording = Arc<Mutex<(Vec<u8>, bool)>>;

/// An upstream that records, per connection, everything it receives, until
/// EOF; then it closes. It never answers.
struct RecordingUpstream {
    upstream: Upstream,
    /// (bytes received, EOF seen), per connection in accept order.
    conns: Arc<Mutex<Vec<Recording>>>,
}

impl RecordingUpstream {
    fn start() -> RecordingUpstream {
        let conns: Arc<Mutex<Vec<Recording>>> = Arc::default();
        let list = Arc::clone(&conns);
        let upstream = Upstream::start(move |mut s| {
            let rec = Arc::new(Mutex::new((Vec::new(), false)));
            list.lock().unwrap().push(Arc::clone(&rec));
            let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
            let mut buf = [0u8; 16 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => rec.lock().unwrap().0.extend_from_slice(&buf[..n]),
                }
            }
            rec.lock().unwrap().1 = true;
            let _ = s.shutdown(Shutdown::Both);
        });
        RecordingUpstream { upstream, conns }
    }

    /// What each connection received so far, and whether it ended.
    fn snapshot(&self) -> Vec<(Vec<u8>, bool)> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }

    /// Waits until `n` connections were accepted and all of them ended.
    fn wait_ended(&self, n: usize, timeout: Duration) -> Vec<(Vec<u8>, bool)> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.snapshot();
            if (s.len() >= n && s.iter().all(|c| c.1)) || Instant::now() >= deadline {
                return s;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Occurrences of `needle` in `hay`.
fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// A `Write` that sends to the socket and keeps a copy of what was sent.
struct Tee<'a> {
    sock: &'a mut TcpStream,
    log: &'a mut Vec<u8>,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.sock.write(buf)?;
        self.log.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// What a [`zero_rtt_connection`] saw.
#[derive(Debug)]
struct ZeroRtt {
    /// The client had a ticket allowing early data, and wrote `early` as 0-RTT.
    early_written: bool,
    resumed: bool,
    early_accepted: bool,
    /// Every byte the client sent on the connection, in order.
    client_bytes: Vec<u8>,
}

/// One TLS 1.3 connection that writes `early` as 0-RTT data (if the client
/// holds a ticket that allows it) before the handshake completes, then
/// `late` after it, then close_notify; reads until the server closes.
fn zero_rtt_connection(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    early: &[u8],
    late: &[u8],
) -> io::Result<ZeroRtt> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
    let early_written = match conn.early_data() {
        Some(mut e) => {
            e.write_all(early)?;
            true
        }
        None => false,
    };
    let mut sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut log = Vec::new();
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        while conn.wants_write() {
            conn.write_tls(&mut Tee {
                sock: &mut sock,
                log: &mut log,
            })?;
        }
        if !conn.is_handshaking() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake"));
        }
        if conn.read_tls(&mut sock)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "EOF during handshake",
            ));
        }
        conn.process_new_packets().map_err(io::Error::other)?;
    }
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let early_accepted = conn.is_early_data_accepted();
    conn.writer().write_all(late)?;
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut Tee {
            sock: &mut sock,
            log: &mut log,
        })?;
    }
    // Drain until the server closes (its upstream never answers).
    let mut buf = [0u8; 4096];
    'read: while Instant::now() < deadline {
        match conn.read_tls(&mut sock) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        conn.process_new_packets().map_err(io::Error::other)?;
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => break 'read,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break 'read,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(ZeroRtt {
        early_written,
        resumed,
        early_accepted,
        client_bytes: log,
    })
}

/// Sends `data` through a handshake-only connection and a close_notify:
/// handshake, write, close_notify, read until the server closes.
fn send_and_close(addr: SocketAddr, config: Arc<rustls::ClientConfig>, data: &[u8]) -> (bool, End) {
    let mut c = TlsClient::connect(addr, config, "localhost")
        .unwrap_or_else(|e| panic!("handshake failed: {e}"));
    let mut once = Some(data.to_vec());
    let mut source = |buf: &mut [u8]| match once.take() {
        Some(d) => {
            buf[..d.len()].copy_from_slice(&d);
            d.len()
        }
        None => 0,
    };
    let r = c.pump(
        &mut source,
        &mut |_: &[u8]| {},
        &PumpOpts {
            close_notify_after_send: true,
            tcp_shutdown_after_close_notify: false,
            recv_until: None,
            timeout: IO_TIMEOUT,
        },
    );
    (c.resumed(), r.end)
}

fn version_of(v: Versions) -> rustls::ProtocolVersion {
    match v {
        Versions::Tls12 => rustls::ProtocolVersion::TLSv1_2,
        _ => rustls::ProtocolVersion::TLSv1_3,
    }
}

fn resumed_counter(v: Versions) -> &'static str {
    match v {
        Versions::Tls12 => "resumed_tls12",
        _ => "resumed_tls13",
    }
}

// ---------------------------------------------------------------------------
// 1. Across workers
// ---------------------------------------------------------------------------

/// Fresh-client pairs (full handshake, then resumption) until a ticket sealed
/// by one worker was opened by the other. Every resumption must succeed, by
/// a ticket the ring opened (not by the session cache).
fn ticket_resumes_on_the_other_worker(versions: Versions) {
    const ATTEMPTS: usize = 60;
    let fe = Frontend::start(&[("worker.count", "2")]);
    let spec = ClientSpec::new(Trust::AnyCert).versions(versions);
    let cpus = fe.worker_cpus();
    let mut before = fe.stats();
    assert_eq!(before.workers.len(), 2, "{before:?}");
    let mut handshakes = before.total.handshakes;
    let mut pairs = Vec::new();
    let mut crossed = None;
    for i in 0..ATTEMPTS {
        let pair = format!("pair {i}");
        let cfg = resuming_client_config(&spec);
        let full = fe.full_visit(cfg.clone(), &pair);
        handshakes += 1;
        let mid = stats_after_handshakes(&fe, handshakes);
        let issuer = single_worker(&before, &mid, "handshakes");
        fe.assert_served_by(&cpus, &full, issuer, &pair, "the full handshake");
        let issued = worker_diff(&before, &mid, "tickets_issued");
        assert!(
            issued[issuer] >= 1,
            "pair {i}: worker {issuer} did the full handshake but sealed no ticket: {}",
            ticket_counters(&mid)
        );

        let again = visit(fe.addr(), cfg, "localhost")
            .unwrap_or_else(|e| panic!("pair {i}, resumption: {e}\n{}", fe.output()));
        assert_eq!(again.version, Some(version_of(versions)), "{again:?}");
        assert!(
            again.resumed && again.http_200,
            "pair {i}: the ticket of worker {issuer} did not resume: {again:?}\n{}\n{}",
            ticket_counters(&fe.stats()),
            fe.output()
        );
        handshakes += 1;
        let after = stats_after_handshakes(&fe, handshakes);
        let redeemer = single_worker(&mid, &after, resumed_counter(versions));
        fe.assert_served_by(&cpus, &again, redeemer, &pair, "the resumption");
        let opened = decrypted_diff(&mid, &after);
        assert_eq!(
            opened.iter().sum::<u64>(),
            1,
            "pair {i}: the resumption did not open exactly one ticket: {}",
            ticket_counters(&after)
        );
        assert_eq!(
            opened[redeemer], 1,
            "pair {i}: worker {redeemer} resumed but another worker opened the ticket: {opened:?}"
        );
        assert_eq!(
            moved(&mid, &after, "cache_hits"),
            0,
            "pair {i}: resumed from the cache"
        );
        pairs.push((issuer, redeemer));
        before = after;
        if issuer != redeemer {
            crossed = Some(i);
            break;
        }
    }
    eprintln!(
        "{versions:?}: (issuer, redeemer) per pair {pairs:?}; {}",
        ticket_counters(&before)
    );
    assert!(
        crossed.is_some(),
        "in {ATTEMPTS} pairs no ticket was opened by the other worker than the one that sealed it: {pairs:?}"
    );
    assert_eq!(before.total.handshake_errors, 0, "{before:?}");
    assert_eq!(
        before.total.get("tickets_decrypt_failures"),
        0,
        "{before:?}"
    );
}

#[test]
fn a_tls12_ticket_sealed_by_one_worker_resumes_on_the_other() {
    ticket_resumes_on_the_other_worker(Versions::Tls12);
}

#[test]
fn a_tls13_ticket_sealed_by_one_worker_resumes_on_the_other() {
    ticket_resumes_on_the_other_worker(Versions::Tls13);
}

// ---------------------------------------------------------------------------
// 2. Rotation and lifetime
// ---------------------------------------------------------------------------

#[test]
fn a_ticket_resumes_after_one_rotation_and_gets_a_full_handshake_once_its_key_left_the_ring() {
    // tickets.rotate_interval = 2s, 3 keys: a ticket sealed in epoch E opens in E (current)
    // and E+1 (previous); from E+2 its key is out of the ring.
    const PERIOD: u64 = 2;
    let fe = Frontend::start(&[
        ("worker.count", "2"),
        ("tickets.rotate_interval", "2s"),
        ("tickets.keys", "3"),
    ]);
    let versions = [Versions::Tls12, Versions::Tls13];
    // Per version: a client for the resumption in E+1 and one for E+3. The
    // second one's clock is set back before use: its lifetime hint (2 s)
    // would otherwise keep it from offering the ticket at all.
    let mut clients = Vec::new();
    let mut handshakes = 0;
    let mut attempts = 0;
    let boundary = loop {
        // Bounded: on a machine too slow to do 4 handshakes in 1.7 s the
        // test cannot place them in one epoch, and says so.
        attempts += 1;
        assert!(
            attempts <= 5,
            "5 times the full handshakes did not fit in one {PERIOD} s epoch\n{}",
            fe.output()
        );
        let boundary = align_to_epoch(PERIOD, 0.05);
        clients.clear();
        for v in versions {
            let spec = ClientSpec::new(Trust::AnyCert).versions(v);
            for _ in 0..2 {
                let clock = Arc::new(LaggingClock::default());
                let cfg = resuming_config_on(&spec, Arc::clone(&clock));
                let full = visit(fe.addr(), cfg.clone(), "localhost")
                    .unwrap_or_else(|e| panic!("{v:?} full handshake: {e}\n{}", fe.output()));
                assert!(!full.resumed && full.http_200, "{v:?}: {full:?}");
                handshakes += 1;
                clients.push((v, cfg, clock));
            }
        }
        // All tickets sealed in the epoch starting at `boundary`?
        if unix_now_f64() < boundary + PERIOD as f64 - 0.3 {
            break boundary;
        }
        eprintln!("full handshakes ran too close to the next rotation; again");
    };
    let s0 = stats_after_handshakes(&fe, handshakes);

    // E+1: the key that sealed the tickets is the previous one.
    sleep_until_unix(boundary + PERIOD as f64 + 0.1);
    for (v, cfg, _) in clients.iter().step_by(2) {
        let r = visit(fe.addr(), cfg.clone(), "localhost")
            .unwrap_or_else(|e| panic!("{v:?} resumption in E+1: {e}\n{}", fe.output()));
        assert!(
            r.resumed && r.http_200,
            "{v:?}: a ticket of the previous epoch did not resume: {r:?}\n{}\n{}",
            ticket_counters(&fe.stats()),
            fe.output()
        );
    }
    assert!(
        unix_now_f64() < boundary + 2.0 * PERIOD as f64,
        "resumptions in E+1 ran into E+2: the machine is too slow for this timing"
    );
    let s1 = stats_after_handshakes(&fe, handshakes + 2);
    let report = || format!("{}\n{}", ticket_counters(&s0), ticket_counters(&s1));
    assert_eq!(
        moved(&s0, &s1, "tickets_decrypted_previous"),
        2,
        "{}",
        report()
    );
    assert_eq!(
        moved(&s0, &s1, "tickets_decrypt_failures"),
        0,
        "{}",
        report()
    );
    assert_eq!(moved(&s0, &s1, "resumed_tls12"), 1, "{}", report());
    assert_eq!(moved(&s0, &s1, "resumed_tls13"), 1, "{}", report());
    assert!(moved(&s0, &s1, "tickets_rotations") >= 1, "{}", report());

    // E+3: the ring has turned over; the ticket's key is gone.
    sleep_until_unix(boundary + 3.0 * PERIOD as f64 + 0.1);
    for (v, cfg, clock) in clients.iter().skip(1).step_by(2) {
        clock.lag_ms.store(3 * PERIOD * 1000, Ordering::Relaxed);
        let r = visit(fe.addr(), cfg.clone(), "localhost")
            .unwrap_or_else(|e| panic!("{v:?} offering a dead ticket: {e}\n{}", fe.output()));
        assert!(
            !r.resumed && r.http_200 && r.end != End::Timeout,
            "{v:?}: a ticket whose key left the ring must get a full handshake: {r:?}\n{}",
            fe.output()
        );
    }
    let s2 = stats_after_handshakes(&fe, handshakes + 4);
    let report = || {
        format!(
            "{}\n{}\n{}",
            ticket_counters(&s0),
            ticket_counters(&s1),
            ticket_counters(&s2)
        )
    };
    assert_eq!(
        moved(&s1, &s2, "tickets_decrypt_failures"),
        2,
        "{}",
        report()
    );
    assert_eq!(moved(&s1, &s2, "resumed_tls12"), 0, "{}", report());
    assert_eq!(moved(&s1, &s2, "resumed_tls13"), 0, "{}", report());
    assert_eq!(moved(&s0, &s2, "handshake_errors"), 0, "{}", report());
    eprintln!("{}", report());
}

// ---------------------------------------------------------------------------
// 3. Tampered tickets
// ---------------------------------------------------------------------------

fn a_tampered_ticket_gets_a_full_handshake(version_flag: &str) {
    let fe = Frontend::start(&[]);
    let dir = temp_dir();
    let sess = dir.path().join("good.pem");
    let bad = dir.path().join("tampered.pem");
    s_client_save_session(&fe, version_flag, &sess);
    let ticket = tamper_session_ticket(&sess, &bad);
    let s0 = stats_after_handshakes(&fe, 1);

    let (reused, out) = s_client_resume(fe.port, version_flag, &bad);
    assert!(
        !reused,
        "a tampered ticket resumed\n{}\n{}",
        out.describe(),
        fe.output()
    );
    let s1 = stats_after_handshakes(&fe, 2);
    let report = format!("{}\n{}", ticket_counters(&s0), ticket_counters(&s1));
    assert_eq!(moved(&s0, &s1, "tickets_decrypt_failures"), 1, "{report}");
    assert_eq!(decrypted_diff(&s0, &s1).iter().sum::<u64>(), 0, "{report}");
    assert_eq!(moved(&s0, &s1, "handshake_errors"), 0, "{report}");

    // The same session untouched still resumes: the one flipped bit made the
    // difference.
    let (reused, out) = s_client_resume(fe.port, version_flag, &sess);
    assert!(
        reused,
        "the untouched ticket did not resume\n{}",
        out.describe()
    );
    let s2 = stats_after_handshakes(&fe, 3);
    eprintln!(
        "{version_flag}: {}-byte ticket; {report}\n{}",
        ticket.len(),
        ticket_counters(&s2)
    );
    assert_eq!(
        moved(&s1, &s2, "tickets_decrypt_failures"),
        0,
        "{}",
        ticket_counters(&s2)
    );
}

#[test]
fn a_tampered_tls12_ticket_gets_a_full_handshake_and_counts_a_decrypt_failure() {
    a_tampered_ticket_gets_a_full_handshake("-tls1_2");
}

#[test]
fn a_tampered_tls13_ticket_gets_a_full_handshake_and_counts_a_decrypt_failure() {
    a_tampered_ticket_gets_a_full_handshake("-tls1_3");
}

// ---------------------------------------------------------------------------
// 4. Restart
// ---------------------------------------------------------------------------

#[test]
fn random_ticket_keys_survive_a_restart_on_the_same_ring_file() {
    let dir = temp_dir();
    let ring = dir.path().join("kept.ring");
    let ring_opt = ("tickets.path", ring.to_str().unwrap());
    let source = ("tickets.key_source", "random");
    let tls12 = resuming_client_config(&ClientSpec::new(Trust::AnyCert).versions(Versions::Tls12));
    let tls13 = resuming_client_config(&ClientSpec::new(Trust::AnyCert).versions(Versions::Tls13));
    {
        let first = Frontend::start(&[ring_opt, source, ("worker.count", "2")]);
        for cfg in [&tls12, &tls13] {
            let v = visit(first.addr(), cfg.clone(), "localhost")
                .unwrap_or_else(|e| panic!("before the restart: {e}\n{}", first.output()));
            assert!(!v.resumed && v.http_200, "{v:?}");
        }
        let s = stats_after_handshakes(&first, 2);
        assert!(
            s.total.get("tickets_issued") >= 3,
            "{}",
            ticket_counters(&s)
        );
        // Dropped here: killed.
    }
    // Another process (another port, its own session cache file) on the
    // same ring file.
    let second = Frontend::start(&[ring_opt, source, ("worker.count", "2")]);
    for (name, cfg) in [("TLS 1.2", &tls12), ("TLS 1.3", &tls13)] {
        let v = visit(second.addr(), cfg.clone(), "localhost")
            .unwrap_or_else(|e| panic!("{name} after the restart: {e}\n{}", second.output()));
        assert!(
            v.resumed && v.http_200,
            "{name}: a ticket from before the restart did not resume: {v:?}\n{}\n{}",
            ticket_counters(&second.stats()),
            second.output()
        );
    }
    let s = stats_after_handshakes(&second, 2);
    eprintln!("after the restart: {}", ticket_counters(&s));
    assert_eq!(s.total.get("resumed_tls12"), 1, "{}", ticket_counters(&s));
    assert_eq!(s.total.get("resumed_tls13"), 1, "{}", ticket_counters(&s));
    let opened: u64 = DECRYPTED.iter().map(|n| s.total.get(n)).sum();
    assert_eq!(opened, 2, "{}", ticket_counters(&s));
    assert_eq!(
        s.total.get("tickets_decrypt_failures"),
        0,
        "{}",
        ticket_counters(&s)
    );
    assert_eq!(s.total.get("cache_hits"), 0, "{}", ticket_counters(&s));
}

// ---------------------------------------------------------------------------
// 5. Hosts sharing a secret
// ---------------------------------------------------------------------------

#[test]
fn processes_sharing_a_file_secret_resume_each_others_tickets_and_another_secret_does_not() {
    let dir = temp_dir();
    let mut secret = vec![0u8; 48];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .unwrap();
    let mut other = secret.clone();
    other[0] ^= 0xff;
    // Each "host" has its own copy of the secret file.
    let paths: Vec<PathBuf> = [
        ("host-a.secret", &secret),
        ("host-b.secret", &secret),
        ("host-c.secret", &other),
    ]
    .iter()
    .map(|(name, bytes)| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    })
    .collect();
    let start = |p: &Path| {
        let source = format!("file:{}", p.display());
        Frontend::start(&[
            ("tickets.key_source", source.as_str()),
            ("worker.count", "1"),
        ])
    };
    let (a, b, c) = (start(&paths[0]), start(&paths[1]), start(&paths[2]));
    for flag in ["-tls1_2", "-tls1_3"] {
        let sess = dir.path().join(format!("from-a{flag}.pem"));
        s_client_save_session(&a, flag, &sess);
        let (reused, out) = s_client_resume(b.port, flag, &sess);
        assert!(
            reused,
            "{flag}: host B (same secret) did not resume host A's ticket\n{}\n{}\n{}",
            out.describe(),
            ticket_counters(&b.stats()),
            b.output()
        );
        let (reused, out) = s_client_resume(c.port, flag, &sess);
        assert!(
            !reused,
            "{flag}: host C (another secret) resumed host A's ticket\n{}",
            out.describe()
        );
    }
    let (sa, sb, sc) = (
        stats_after_handshakes(&a, 2),
        stats_after_handshakes(&b, 2),
        stats_after_handshakes(&c, 2),
    );
    let report = format!(
        "A: {}\nB: {}\nC: {}",
        ticket_counters(&sa),
        ticket_counters(&sb),
        ticket_counters(&sc)
    );
    eprintln!("{report}");
    assert_eq!(sb.total.get("resumed_tls12"), 1, "{report}");
    assert_eq!(sb.total.get("resumed_tls13"), 1, "{report}");
    assert_eq!(sb.total.get("tickets_decrypt_failures"), 0, "{report}");
    assert_eq!(
        sc.total.get("resumed_tls12") + sc.total.get("resumed_tls13"),
        0,
        "{report}"
    );
    assert_eq!(sc.total.get("tickets_decrypt_failures"), 2, "{report}");
    for s in [&sa, &sb, &sc] {
        assert_eq!(s.total.handshake_errors, 0, "{report}");
    }
}

// ---------------------------------------------------------------------------
// 6. Rotation under load
// ---------------------------------------------------------------------------

#[test]
fn resumptions_at_full_speed_across_rotations_never_fail() {
    const RUN: Duration = Duration::from_millis(3500);
    let fe = Frontend::start(&[("worker.count", "2"), ("tickets.rotate_interval", "1s")]);
    // Start just after a rotation so the run spans at least 3 of them.
    align_to_epoch(1, 0.02);
    let stop = Arc::new(AtomicBool::new(false));
    let addr = fe.addr();
    let threads: Vec<_> = [Versions::Tls12, Versions::Tls13]
        .into_iter()
        .map(|v| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let cfg = resuming_client_config(&ClientSpec::new(Trust::AnyCert).versions(v));
                let (mut ok, mut resumed, mut not_resumed, mut failures) =
                    (0u64, 0u64, Vec::new(), Vec::new());
                let start = Instant::now();
                let mut previous: Option<Instant> = None;
                while !stop.load(Ordering::Relaxed) && start.elapsed() < RUN {
                    let i = ok + failures.len() as u64;
                    let began = Instant::now();
                    // The ticket offered now came from the connection before,
                    // `gap` ago. Under 0.9 s it is valid for the client (its
                    // lifetime hint is 1 s) and its key is in the ring
                    // (current or previous), whatever rotated meanwhile.
                    let gap = previous.map(|p| began - p);
                    previous = Some(began);
                    match visit(addr, cfg.clone(), "localhost") {
                        Ok(r) if r.http_200 => {
                            ok += 1;
                            if r.resumed {
                                resumed += 1;
                            } else if let Some(gap) = gap {
                                not_resumed.push((i, gap, gap < Duration::from_millis(900)));
                            }
                        }
                        Ok(r) => failures.push(format!("#{i}: {r:?}")),
                        Err(e) => failures.push(format!("#{i}: {e}")),
                    }
                }
                (v, ok, resumed, not_resumed, failures)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let total_ok: u64 = results.iter().map(|r| r.1).sum();
    let (stats, _) = fe.wait_stats(STATS_WAIT, |s| {
        s.total.handshakes >= total_ok && s.total.active == 0
    });
    for (v, ok, resumed, not_resumed, failures) in &results {
        eprintln!(
            "{v:?}: {ok} connections, {resumed} resumed; not resumed after the first \
             (index, gap, gap under 0.9 s): {not_resumed:?}"
        );
        assert!(
            failures.is_empty(),
            "{v:?}: {} failed connections, first: {:?}\n{}",
            failures.len(),
            failures.first(),
            fe.output()
        );
        assert!(
            not_resumed.iter().all(|(_, _, fresh)| !fresh),
            "{v:?}: connections that did not resume the ticket the one before got \
             (index, time since the one before, that was under 0.9 s): {not_resumed:?}\n{}",
            ticket_counters(&stats)
        );
        assert!(*ok > 10, "{v:?}: only {ok} connections in {RUN:?}");
    }
    eprintln!("{}", ticket_counters(&stats));
    assert!(
        stats.total.get("tickets_rotations") >= 2,
        "fewer than 2 rotations in {RUN:?} at tickets.rotate_interval = 1s: {}",
        ticket_counters(&stats)
    );
    assert_eq!(
        stats.total.handshake_errors,
        0,
        "{}",
        ticket_counters(&stats)
    );
    assert_eq!(
        stats.total.get("tickets_decrypt_failures"),
        0,
        "{}",
        ticket_counters(&stats)
    );
    assert_eq!(
        stats.total.handshakes,
        total_ok,
        "{}",
        ticket_counters(&stats)
    );
}

// ---------------------------------------------------------------------------
// 7. 0-RTT and replay
// ---------------------------------------------------------------------------

#[test]
fn early_data_reaches_the_upstream_once_and_a_replayed_flight_gets_none_through() {
    let up = RecordingUpstream::start();
    let fe = Frontend::start(&[
        ("worker.count", "2"),
        ("tickets.tls13_mode", "stateful"),
        ("tls.early_data_max", "16k"),
        ("upstream.addr", &up.upstream.addr_string()),
    ]);
    let mut cfg =
        (*resuming_client_config(&ClientSpec::new(Trust::AnyCert).versions(Versions::Tls13)))
            .clone();
    cfg.enable_early_data = true;
    let cfg = Arc::new(cfg);
    let nonce = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let early = format!("EARLY-0RTT-{nonce};").into_bytes();
    let late = format!("AFTER-HANDSHAKE-{nonce};").into_bytes();

    // 1. A full handshake: the client gets tickets that allow early data.
    let (resumed, end) = send_and_close(fe.addr(), cfg.clone(), b"FIRST;");
    assert!(!resumed, "the first connection cannot resume");
    assert!(
        matches!(end, End::CloseNotify | End::TcpEof),
        "{end:?}\n{}",
        fe.output()
    );
    let rec = up.wait_ended(1, IO_TIMEOUT);
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0].0, b"FIRST;");

    // 2. 0-RTT: early data before the handshake completes.
    let z = zero_rtt_connection(fe.addr(), cfg.clone(), &early, &late)
        .unwrap_or_else(|e| panic!("0-RTT connection: {e}\n{}", fe.output()));
    assert!(
        z.early_written,
        "the client had no ticket allowing early data: {z:?}"
    );
    assert!(
        z.resumed,
        "the 0-RTT connection did not resume\n{}",
        fe.output()
    );
    assert!(
        z.early_accepted,
        "the server did not accept the early data\n{}",
        fe.output()
    );
    let rec = up.wait_ended(2, IO_TIMEOUT);
    assert_eq!(rec.len(), 2, "{rec:?}");
    assert_eq!(
        String::from_utf8_lossy(&rec[1].0),
        String::from_utf8_lossy(&[early.as_slice(), late.as_slice()].concat()),
        "the upstream of the 0-RTT connection must get the early data then the rest, once"
    );
    let s0 = stats_after_handshakes(&fe, 2);
    assert_eq!(s0.total.get("resumed_tls13"), 1, "{s0:?}");

    // 3. Replay every byte the client sent on that connection.
    let mut replay = TcpStream::connect_timeout(&fe.addr(), IO_TIMEOUT).unwrap();
    replay.write_all(&z.client_bytes).unwrap();
    let _ = replay.shutdown(Shutdown::Write);
    let (answer, closed) = read_until_closed(&mut replay, IO_TIMEOUT);
    assert!(
        closed.is_ok(),
        "tlsfront kept the replayed connection open: {closed:?}"
    );
    drop(replay);
    let (s1, ok) = fe.wait_stats(STATS_WAIT, |s| {
        s.total.accepted > s0.total.accepted && s.total.active == 0
    });
    assert!(
        ok,
        "the replayed connection was never accepted and closed: {s1:?}"
    );
    // Give a wrongly accepted replay time to reach the upstream.
    thread::sleep(Duration::from_millis(300));
    let rec = up.snapshot();
    let early_seen: usize = rec.iter().map(|c| count(&c.0, &early)).sum();
    let report = format!(
        "{} bytes replayed, {} bytes answered; upstream connections {}; {}\n{}",
        z.client_bytes.len(),
        answer.len(),
        rec.len(),
        ticket_counters(&s0),
        ticket_counters(&s1)
    );
    let why: Vec<String> = fe
        .stderr()
        .lines()
        .filter(|l| l.contains("handshake failed"))
        .map(str::to_string)
        .collect();
    eprintln!("{report}\nreplay: {why:?}");
    assert_eq!(
        early_seen, 1,
        "the early data reached the upstream {early_seen} times: {report}"
    );
    assert_eq!(rec.len(), 2, "the replay reached the upstream: {report}");
    assert_eq!(
        moved(&s0, &s1, "resumed_tls13"),
        0,
        "the replay resumed: {report}"
    );
    assert_eq!(moved(&s0, &s1, "bytes_client_to_upstream"), 0, "{report}");

    // 4. tlsfront still serves a fresh client.
    let fresh = resuming_client_config(&ClientSpec::new(Trust::AnyCert).versions(Versions::Tls13));
    let (resumed, end) = send_and_close(fe.addr(), fresh, b"FRESH;");
    assert!(!resumed);
    assert!(
        matches!(end, End::CloseNotify | End::TcpEof),
        "{end:?}\n{}",
        fe.output()
    );
    let rec = up.wait_ended(3, IO_TIMEOUT);
    assert_eq!(rec.len(), 3, "{rec:?}");
    assert_eq!(rec[2].0, b"FRESH;");
}

/// TLS 1.3 tickets a handshake's s_client output says arrived.
fn tickets_arrived(out: &CmdOutput) -> usize {
    out.stdout
        .matches("Post-Handshake New Session Ticket arrived")
        .count()
}

#[test]
fn a_resumed_tls13_handshake_gets_one_new_ticket_a_full_one_tls13_tickets() {
    let fe = Frontend::start(&[("tls.tls13_tickets", "3")]);
    let dir = tlsfront_tests::temp_dir();
    let sess = dir.path().join("s13.pem");
    let full = s_client_save_session(&fe, "-tls1_3", &sess);
    assert_eq!(
        tickets_arrived(&full),
        3,
        "full handshake\n{}",
        full.describe()
    );
    let again = s_client(
        fe.port,
        &["-tls1_3", "-ign_eof", "-sess_in", sess.to_str().unwrap()],
        b"GET / HTTP/1.0\r\n\r\n",
    );
    assert_eq!(
        lines_starting(&again, "Reused,"),
        1,
        "no resumption\n{}",
        again.describe()
    );
    assert_eq!(
        tickets_arrived(&again),
        1,
        "resumed handshake\n{}",
        again.describe()
    );
}
