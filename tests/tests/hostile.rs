//! Hostile clients against a real tlsfront process: slowloris half
//! handshakes, garbage floods, oversized and lying ClientHellos (raw bytes
//! built by hand), forged session IDs and tickets, TLS 1.2 renegotiation,
//! and sessions offered under another server name. Each test has its own
//! process (port, cache, ticket ring), a bounded run time, and checks one
//! behaviour; most also check that the process stays up and that the next
//! legitimate client is served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tlsfront_tests::*;
use tlsfront_tests::{load::*, openssl_client::*, raw_tls::*, sockets::*};

const STATS_WAIT: Duration = Duration::from_secs(10);

/// Open-file limit (soft) of this test process, and so of every tlsfront it
/// starts: enough for the slowloris tests' 1000 connections on both sides.
const NOFILE: u64 = 4096;

/// [`Frontend::start`] after raising this process's open-file limit to
/// [`NOFILE`]: tlsfront inherits the limit at spawn, so it is the same for
/// every test here whatever ran before.
fn start(opts: &[(&str, &str)]) -> Frontend {
    raise_nofile(NOFILE);
    Frontend::start(opts)
}

/// A legitimate client: handshake, `GET /`, HTTP 200 from the built-in upstream.
fn legit_visit(fe: &Frontend, what: &str) -> Duration {
    let start = Instant::now();
    let v = visit(
        fe.addr(),
        ClientSpec::new(Trust::AnyCert).build(),
        "localhost",
    )
    .unwrap_or_else(|e| panic!("{what}: legitimate client failed: {e}\n{}", fe.output()));
    assert!(
        v.http_200,
        "{what}: legitimate client got no HTTP 200: {v:?}\n{}",
        fe.output()
    );
    start.elapsed()
}

/// Opens `n` connections that each send the first half of a ClientHello
/// (the record header announces the whole of it) and then nothing; returns
/// them with the moment each was sent.
fn slowloris(addr: SocketAddr, n: usize) -> Vec<(TcpStream, Instant)> {
    assert!(
        raise_nofile(NOFILE) >= n as u64 + 64,
        "open-file limit too low for {n} connections"
    );
    (0..n)
        .map(|i| {
            let hello = Hello::tls13("localhost", i as u64).records();
            let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
                .unwrap_or_else(|e| panic!("slowloris connection #{i}: {e}"));
            s.set_nodelay(true).unwrap();
            s.write_all(&hello[..hello.len() / 2])
                .unwrap_or_else(|e| panic!("slowloris connection #{i}: write: {e}"));
            (s, Instant::now())
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Slowloris
// ---------------------------------------------------------------------------

#[test]
fn a_thousand_slowloris_half_handshakes_do_not_delay_a_legitimate_handshake_past_one_second() {
    const N: usize = 1000;
    let fe = start(&[("worker.count", "2")]);
    let opened = Instant::now();
    let held = slowloris(fe.addr(), N);
    let (s, ok) = fe.wait_stats(STATS_WAIT, |s| s.total.active >= N as u64);
    assert!(ok, "the {N} half handshakes are not all open: {s:?}");
    eprintln!("{N} half handshakes open after {:?}", opened.elapsed());

    // Full handshakes (fresh client each time) while all of them are held.
    let mut took = Vec::new();
    for i in 0..5 {
        let start = Instant::now();
        let c = TlsClient::connect(
            fe.addr(),
            ClientSpec::new(Trust::AnyCert).build(),
            "localhost",
        )
        .unwrap_or_else(|e| panic!("legitimate handshake #{i}: {e}\n{}", fe.output()));
        took.push(start.elapsed());
        drop(c);
        thread::sleep(Duration::from_millis(100));
    }
    let full_visit = legit_visit(&fe, "with the half handshakes open");
    eprintln!("legitimate handshakes took {took:?}; a whole visit {full_visit:?}");
    for (i, t) in took.iter().enumerate() {
        assert!(
            *t < Duration::from_secs(1),
            "legitimate handshake #{i} took {t:?} with {N} half handshakes open (all: {took:?})"
        );
    }
    let s = fe.stats();
    assert!(
        s.total.active >= N as u64,
        "the half handshakes were closed before the (default 10 s) handshake timeout: {s:?}"
    );
    drop(held);
}

#[test]
fn a_thousand_slowloris_half_handshakes_are_closed_at_the_handshake_timeout_and_counted() {
    const N: usize = 1000;
    let fe = start(&[("worker.count", "2"), ("limits.handshake_timeout", "2")]);
    let before = fe.stats();
    let held = slowloris(fe.addr(), N);
    let last_sent = held.last().unwrap().1;
    let (mut socks, sent): (Vec<TcpStream>, Vec<Instant>) = held.into_iter().unzip();
    let closes = watch_closes(&mut socks, last_sent + Duration::from_secs(8));
    let mut after_ms: Vec<u128> = Vec::new();
    let mut open = 0;
    let mut how = std::collections::BTreeMap::<String, usize>::new();
    for (c, t0) in closes.iter().zip(&sent) {
        match c {
            Some((t, closed)) => {
                after_ms.push(t.duration_since(*t0).as_millis());
                let k = match closed {
                    Closed::Eof { bytes } => format!("EOF after {bytes} bytes"),
                    Closed::Error { kind, bytes } => format!("{kind:?} after {bytes} bytes"),
                };
                *how.entry(k).or_default() += 1;
            }
            None => open += 1,
        }
    }
    after_ms.sort_unstable();
    let pct = |p: usize| after_ms.get(after_ms.len() * p / 100).copied();
    eprintln!(
        "{} of {N} closed by the server; time from sending to close (ms): min {:?} p50 {:?} max {:?}; how: {how:?}",
        after_ms.len(),
        after_ms.first(),
        pct(50),
        after_ms.last()
    );
    let s = fe.stats();
    eprintln!(
        "stats now: handshake_errors {} -> {}, active {}, accepted {}",
        before.total.handshake_errors, s.total.handshake_errors, s.total.active, s.total.accepted
    );
    assert_eq!(
        open, 0,
        "{open} of {N} half handshakes still open 8 s after the last was sent (timeout 2 s), \
         while tlsfront counts handshake_errors {} and active {}",
        s.total.handshake_errors, s.total.active
    );
    assert!(
        *after_ms.first().unwrap() >= 1500,
        "a half handshake was closed after {} ms, before the 2 s handshake timeout",
        after_ms[0]
    );
    assert!(
        *after_ms.last().unwrap() <= 4000,
        "a half handshake was closed only after {} ms (timeout 2 s)",
        after_ms.last().unwrap()
    );
    let (s, ok) = fe.wait_stats(STATS_WAIT, |s| {
        s.total.handshake_errors >= before.total.handshake_errors + N as u64 && s.total.active == 0
    });
    eprintln!(
        "handshake_errors {} -> {}, active {}",
        before.total.handshake_errors, s.total.handshake_errors, s.total.active
    );
    assert!(
        ok,
        "handshake_errors did not grow by {N} (or connections still active): {s:?}"
    );
    legit_visit(&fe, "after the half handshakes timed out");
}

// ---------------------------------------------------------------------------
// 2. Garbage
// ---------------------------------------------------------------------------

#[test]
fn a_garbage_flood_closes_only_the_garbage_connections_and_legitimate_clients_keep_working() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 50;
    const HUGE: usize = 2;
    const HUGE_LIMIT: usize = 256 << 20;
    let mut fe = start(&[("worker.count", "2")]);
    let legit = LoadLoop::start(
        fe.addr(),
        &[Versions::Both],
        Some(3),
        Duration::from_millis(50),
    );
    let addr = fe.addr();
    // Connections that send 32 KiB of noise and wait for the server to close.
    let small: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                let mut still_open = Vec::new();
                let mut longest = Duration::ZERO;
                for i in 0..PER_THREAD {
                    let seed = (t * PER_THREAD + i) as u64 + 1;
                    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
                    let start = Instant::now();
                    let _ = s.write_all(&noise(seed, 32 * 1024));
                    let (_, res) = read_until_closed(&mut s, Duration::from_secs(5));
                    longest = longest.max(start.elapsed());
                    if res == Err(std::io::ErrorKind::TimedOut) {
                        still_open.push(seed);
                    }
                }
                (still_open, longest)
            })
        })
        .collect();
    // Connections that stream noise until the server closes them.
    let huge: Vec<_> = (0..HUGE)
        .map(|h| {
            thread::spawn(move || {
                let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                let start = Instant::now();
                let mut p = Pattern::new(1000 + h as u64);
                let mut chunk = vec![0u8; 64 * 1024];
                let mut sent = 0usize;
                let err = loop {
                    if sent >= HUGE_LIMIT {
                        break None;
                    }
                    p.fill(&mut chunk);
                    match s.write_all(&chunk) {
                        Ok(()) => sent += chunk.len(),
                        Err(e) => break Some(e.kind()),
                    }
                };
                (sent, err, start.elapsed())
            })
        })
        .collect();
    let mut failures = Vec::new();
    for (t, h) in small.into_iter().enumerate() {
        let (open, longest) = h.join().unwrap();
        eprintln!("garbage thread {t}: longest time to close {longest:?}");
        if !open.is_empty() {
            failures.push(format!("garbage seeds still open after 5 s: {open:?}"));
        }
    }
    for (i, h) in huge.into_iter().enumerate() {
        let (sent, err, took) = h.join().unwrap();
        eprintln!("huge stream {i}: {sent} bytes sent, ended with {err:?} after {took:?}");
        if err.is_none() {
            failures.push(format!(
                "huge stream {i}: the server took {sent} bytes of noise without closing"
            ));
        }
    }
    // Legitimate clients after the flood too.
    thread::sleep(Duration::from_millis(300));
    let attempts = legit.stop();
    legit_visit(&fe, "after the flood");
    assert!(fe.is_running(), "tlsfront exited\n{}", fe.output());
    assert!(failures.is_empty(), "{failures:?}\n{}", fe.output());
    let bad: Vec<_> = attempts.iter().filter(|a| !a.ok).collect();
    eprintln!(
        "legitimate clients during the flood: {} connections, {} resumed, {} failed",
        attempts.len(),
        attempts.iter().filter(|a| a.resumed).count(),
        bad.len()
    );
    assert!(
        bad.is_empty(),
        "legitimate connections failed during the flood: {bad:?}\n{}",
        fe.output()
    );
    assert!(
        attempts.len() >= 5,
        "only {} legitimate connections",
        attempts.len()
    );
    let (s, ok) = fe.wait_stats(STATS_WAIT, |s| {
        s.total.handshake_errors >= (THREADS * PER_THREAD + HUGE) as u64
    });
    eprintln!(
        "handshake_errors {}, handshakes {}",
        s.total.handshake_errors, s.total.handshakes
    );
    assert!(ok, "the garbage connections were not all counted: {s:?}");
}

// ---------------------------------------------------------------------------
// 3. Oversized and lying ClientHellos
// ---------------------------------------------------------------------------

/// Sends `bytes` on a new connection; the server must end it within
/// `within`. Returns what it sent back.
fn expect_closed(fe: &Frontend, bytes: &[u8], within: Duration, what: &str) -> Flight {
    let start = Instant::now();
    let f = send_raw(fe.addr(), bytes, within + Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
    let took = start.elapsed();
    eprintln!("{what}: {f:?} after {took:?}");
    assert!(
        f.server_hello.is_none(),
        "{what}: the server answered with a ServerHello: {f:?}"
    );
    assert!(
        f.closed || f.alert.is_some(),
        "{what}: neither an alert nor a close within {:?}: {f:?}\n{}",
        within + Duration::from_secs(3),
        fe.output()
    );
    assert!(
        took <= within,
        "{what}: closed after {took:?}, expected within {within:?}"
    );
    f
}

#[test]
fn a_client_hello_over_64_kib_or_claiming_16_mib_is_refused_at_once_and_the_next_client_succeeds() {
    let fe = start(&[]);
    // Extensions filling their 16-bit length: a ClientHello of 65,630
    // bytes, over the 65,535 a handshake message may have, in 5 records.
    let mut hello = Hello::tls13("localhost", 1);
    let room = 0xffff - hello.extensions_len() - 4;
    hello.extra = vec![(0xfafa, noise(2, room))];
    assert_eq!(hello.extensions_len(), 0xffff);
    let len = hello.message().len() - 4;
    assert!(len > 0xffff, "{len}");
    let f = expect_closed(
        &fe,
        &hello.records(),
        Duration::from_secs(2),
        &format!("{len}-byte ClientHello"),
    );
    // (An alert is not required: the server closes with bytes of the
    // hello unread, so the client's kernel may see a reset first.)
    eprintln!("{len}-byte ClientHello: alert {:?}", f.alert);
    legit_visit(&fe, "after an oversized ClientHello");

    // A handshake header claiming 16 MiB, followed by a real ClientHello body.
    let body = Hello::tls13("localhost", 4).body();
    let mut msg = vec![1, 0xff, 0xff, 0xff];
    msg.extend_from_slice(&body);
    let f = expect_closed(
        &fe,
        &handshake_records(&msg),
        Duration::from_secs(2),
        "16 MiB handshake length",
    );
    eprintln!("16 MiB handshake length: alert {:?}", f.alert);
    legit_visit(&fe, "after a 16 MiB handshake length");
    for l in fe
        .stderr()
        .lines()
        .filter(|l| l.contains("handshake failed"))
    {
        eprintln!("tlsfront: {l}");
    }
    let s = fe.stats();
    assert_eq!(s.total.handshake_errors, 2, "{s:?}");
}

#[test]
fn a_client_hello_with_a_60_kb_extension_is_handled_and_the_next_client_succeeds() {
    // 60 KB fits the 64 KiB a handshake message may have: the server may
    // ignore the unknown extension and answer, or refuse; either way
    // promptly, and only this connection is affected.
    let fe = start(&[]);
    let mut hello = Hello::tls13("localhost", 5);
    hello.extra = vec![(0xfafa, noise(6, 60_000))];
    let start = Instant::now();
    let f = send_raw(fe.addr(), &hello.records(), Duration::from_secs(5)).unwrap();
    eprintln!("60 KB extension: {f:?} after {:?}", start.elapsed());
    assert!(
        f.server_hello.is_some() || f.alert.is_some() || f.closed,
        "no answer within 5 s to a ClientHello with a 60 KB extension: {f:?}\n{}",
        fe.output()
    );
    if let Some(sh) = &f.server_hello {
        assert_eq!(sh.version, 0x0304, "{f:?}");
    }
    legit_visit(&fe, "after a 60 KB extension");
}

#[test]
fn a_client_hello_record_claiming_more_than_it_carries_is_closed_at_the_handshake_timeout() {
    let fe = start(&[("limits.handshake_timeout", "2")]);
    let msg = Hello::tls13("localhost", 7).message();
    // The record header says 16384 bytes; only the real hello follows.
    let mut bytes = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    bytes.extend_from_slice(&msg);
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&fe.addr(), IO_TIMEOUT).unwrap();
    s.write_all(&bytes).unwrap();
    // A ClientHello claiming more than the record carries.
    let mut m2 = msg.clone();
    m2[1..4].copy_from_slice(&[0x00, 0x30, 0x00]);
    let mut s2 = TcpStream::connect_timeout(&fe.addr(), IO_TIMEOUT).unwrap();
    s2.write_all(&handshake_records(&m2)).unwrap();
    // Meanwhile a legitimate client is served at once.
    let t = legit_visit(&fe, "while two lying records are pending");
    assert!(t < Duration::from_secs(1), "legitimate visit took {t:?}");
    let mut socks = vec![s, s2];
    let closes = watch_closes(&mut socks, start + Duration::from_secs(6));
    eprintln!(
        "closed: {:?}",
        closes
            .iter()
            .map(|c| c
                .as_ref()
                .map(|(t, how)| (t.duration_since(start), how.clone())))
            .collect::<Vec<_>>()
    );
    for (i, c) in closes.iter().enumerate() {
        let (t, _) = c
            .as_ref()
            .unwrap_or_else(|| panic!("lying record #{i} still open after 6 s\n{}", fe.output()));
        let after = t.duration_since(start);
        assert!(
            after >= Duration::from_millis(1800) && after <= Duration::from_secs(4),
            "lying record #{i} closed after {after:?}, expected at the 2 s handshake timeout"
        );
    }
    let (s, ok) = fe.wait_stats(STATS_WAIT, |s| s.total.handshake_errors >= 2);
    assert!(ok, "{s:?}");
    legit_visit(&fe, "after the lying records");
}

// ---------------------------------------------------------------------------
// 4. Forged session IDs and tickets
// ---------------------------------------------------------------------------

const FORGED: u64 = 100;

fn stat(s: &Stats, name: &str) -> u64 {
    s.total.get(name)
}

fn resumed_total(s: &Stats) -> u64 {
    stat(s, "resumed_tls12") + stat(s, "resumed_tls13")
}

#[test]
fn forged_tls12_session_ids_get_full_handshakes_and_count_cache_misses() {
    let mut fe = start(&[("worker.count", "2"), ("tickets.enabled", "0")]);
    let s0 = fe.stats();
    let mut echoed = 0;
    for i in 0..FORGED {
        let mut h = Hello::tls12("localhost", 100 + i);
        h.ticket = None;
        h.session_id = noise(10_000 + i, 32);
        let f = send_raw(fe.addr(), &h.records(), IO_TIMEOUT).unwrap();
        assert!(
            f.tls12_full(),
            "forged session ID #{i}: no full TLS 1.2 handshake: {f:?}\n{}",
            fe.output()
        );
        let sh = f.server_hello.as_ref().unwrap();
        if sh.session_id == h.session_id {
            echoed += 1;
        }
    }
    assert_eq!(
        echoed, 0,
        "the server echoed forged session IDs (resumption)"
    );
    let (s1, ok) = fe.wait_stats(STATS_WAIT, |s| {
        stat(s, "cache_misses") >= stat(&s0, "cache_misses") + FORGED
    });
    eprintln!(
        "after {FORGED} forged session IDs: cache_lookups {} -> {}, cache_misses {} -> {}, cache_hits {} -> {}",
        stat(&s0, "cache_lookups"),
        stat(&s1, "cache_lookups"),
        stat(&s0, "cache_misses"),
        stat(&s1, "cache_misses"),
        stat(&s0, "cache_hits"),
        stat(&s1, "cache_hits")
    );
    assert!(ok, "cache_misses did not grow by {FORGED}: {s1:?}");
    assert_eq!(stat(&s1, "cache_hits"), stat(&s0, "cache_hits"));
    assert_eq!(resumed_total(&s1), resumed_total(&s0));

    // openssl completes a full handshake with a saved session whose ID was
    // replaced by random bytes.
    let dir = temp_dir();
    let good = dir.path().join("good.pem");
    let forged = dir.path().join("forged.pem");
    let out = s_client(
        fe.port,
        "localhost",
        &["-tls1_2", "-sess_out", good.to_str().unwrap()],
        b"",
    );
    assert_eq!(lines_starting(&out, "New,"), 1, "{}", out.describe());
    let id = session_id_of(&good);
    assert_eq!(id.len(), 32, "session ID of the saved session: {id:?}");
    replace_in_session(&good, &id, &noise(99, 32), &forged);
    let out = s_client(
        fe.port,
        "localhost",
        &["-tls1_2", "-ign_eof", "-sess_in", forged.to_str().unwrap()],
        b"GET / HTTP/1.0\r\n\r\n",
    );
    assert_eq!(
        lines_starting(&out, "New,"),
        1,
        "a forged session ID did not get a full handshake\n{}",
        out.describe()
    );
    assert!(out.stdout.contains("HTTP/1.1 200"), "{}", out.describe());
    // The genuine one still resumes.
    let out = s_client(
        fe.port,
        "localhost",
        &["-tls1_2", "-sess_in", good.to_str().unwrap()],
        b"",
    );
    assert_eq!(lines_starting(&out, "Reused,"), 1, "{}", out.describe());
    assert!(fe.is_running(), "{}", fe.output());
}

#[test]
fn forged_tls12_tickets_get_full_handshakes_and_count_decrypt_failures() {
    let mut fe = start(&[("worker.count", "2")]);
    let s0 = fe.stats();
    for i in 0..FORGED {
        // Lengths from 1 byte to ~1 KB, random contents.
        let len = 1 + ((i * 97) % 1000) as usize;
        let mut h = Hello::tls12("localhost", 200 + i);
        h.session_id = noise(20_000 + i, 32);
        h.ticket = Some(noise(30_000 + i, len));
        let f = send_raw(fe.addr(), &h.records(), IO_TIMEOUT).unwrap();
        assert!(
            f.tls12_full() && !f.change_cipher_spec,
            "forged {len}-byte ticket #{i}: no full TLS 1.2 handshake: {f:?}\n{}",
            fe.output()
        );
    }
    let (s1, ok) = fe.wait_stats(STATS_WAIT, |s| {
        stat(s, "tickets_decrypt_failures") >= stat(&s0, "tickets_decrypt_failures") + FORGED
    });
    eprintln!(
        "after {FORGED} forged TLS 1.2 tickets: tickets_decrypt_failures {} -> {}",
        stat(&s0, "tickets_decrypt_failures"),
        stat(&s1, "tickets_decrypt_failures")
    );
    assert!(
        ok,
        "tickets_decrypt_failures did not grow by {FORGED}: {s1:?}"
    );
    assert_eq!(
        stat(&s1, "tickets_decrypt_failures"),
        stat(&s0, "tickets_decrypt_failures") + FORGED
    );
    assert_eq!(resumed_total(&s1), resumed_total(&s0));
    assert!(fe.is_running(), "{}", fe.output());
    legit_visit(&fe, "after forged TLS 1.2 tickets");
}

#[test]
fn forged_tls13_ticket_identities_get_full_handshakes_and_count_decrypt_failures() {
    let mut fe = start(&[("worker.count", "2")]);
    let s0 = fe.stats();
    for i in 0..FORGED {
        let len = 1 + ((i * 131) % 1200) as usize;
        let mut h = Hello::tls13("localhost", 300 + i);
        h.psk = Some((noise(40_000 + i, len), noise(50_000 + i, 32)));
        let f = send_raw(fe.addr(), &h.records(), IO_TIMEOUT).unwrap();
        let sh = f.server_hello.as_ref().unwrap_or_else(|| {
            panic!(
                "forged {len}-byte TLS 1.3 ticket #{i}: no ServerHello: {f:?}\n{}",
                fe.output()
            )
        });
        assert_eq!(sh.version, 0x0304, "#{i}: {f:?}");
        assert!(
            !f.tls13_psk_accepted(),
            "forged TLS 1.3 ticket #{i} was accepted as a PSK: {f:?}"
        );
    }
    let (s1, ok) = fe.wait_stats(STATS_WAIT, |s| {
        stat(s, "tickets_decrypt_failures") >= stat(&s0, "tickets_decrypt_failures") + FORGED
    });
    eprintln!(
        "after {FORGED} forged TLS 1.3 tickets: tickets_decrypt_failures {} -> {}",
        stat(&s0, "tickets_decrypt_failures"),
        stat(&s1, "tickets_decrypt_failures")
    );
    assert!(
        ok,
        "tickets_decrypt_failures did not grow by {FORGED}: {s1:?}"
    );
    assert_eq!(resumed_total(&s1), resumed_total(&s0));
    assert!(fe.is_running(), "{}", fe.output());
    legit_visit(&fe, "after forged TLS 1.3 tickets");
}

// ---------------------------------------------------------------------------
// 5. Renegotiation
// ---------------------------------------------------------------------------

/// `openssl s_client -tls1_2` that sends `R` (renegotiate) on stdin once the
/// handshake is done, keeps stdin open for up to `wait`, and returns its
/// output and whether it exited by itself.
fn s_client_renegotiate(port: u16, wait: Duration) -> (String, String, bool) {
    let mut child = tlsfront_tests::prereq::tool("openssl")
        .args([
            "s_client",
            "-tls1_2",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl s_client");
    let out = Arc::new(Mutex::new(String::new()));
    let err = Arc::new(Mutex::new(String::new()));
    let collect = |mut r: Box<dyn Read + Send>, acc: Arc<Mutex<String>>| {
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                acc.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let t1 = collect(Box::new(child.stdout.take().unwrap()), out.clone());
    let t2 = collect(Box::new(child.stderr.take().unwrap()), err.clone());
    let mut stdin = child.stdin.take().unwrap();
    let start = Instant::now();
    let handshaken = loop {
        if out.lock().unwrap().contains("New,") {
            break true;
        }
        if start.elapsed() > Duration::from_secs(10) || matches!(child.try_wait(), Ok(Some(_))) {
            break false;
        }
        thread::sleep(Duration::from_millis(20));
    };
    if handshaken {
        // s_client's verify/session print-out precedes its stdin loop.
        thread::sleep(Duration::from_millis(200));
        let _ = stdin.write_all(b"R\n");
        let _ = stdin.flush();
    }
    let deadline = Instant::now() + wait;
    let exited = loop {
        if let Ok(Some(_)) = child.try_wait() {
            break true;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    let _ = t1.join();
    let _ = t2.join();
    let o = out.lock().unwrap().clone();
    let e = err.lock().unwrap().clone();
    (o, e, exited)
}

#[test]
fn tls12_renegotiation_is_refused_and_the_process_keeps_serving() {
    let mut fe = start(&[]);
    let (out, err, exited) = s_client_renegotiate(fe.port, Duration::from_secs(5));
    eprintln!(
        "s_client exited by itself: {exited}\n--- stdout (tail) ---\n{}\n--- stderr ---\n{err}",
        &out[out.len().saturating_sub(600)..]
    );
    assert!(out.contains("New,"), "no first handshake\n{out}\n{err}");
    assert!(
        out.contains("RENEGOTIATING") || err.contains("RENEGOTIATING"),
        "s_client did not try to renegotiate\n{out}\n{err}"
    );
    // The refusal itself: the server answered the new ClientHello with a
    // no_renegotiation alert, which s_client reports as `no renegotiation`.
    // Any other end (a reset, a timeout, a different alert) is not it.
    let refused = err.to_lowercase().contains("no renegotiation")
        || err.to_lowercase().contains("no_renegotiation");
    assert!(
        refused,
        "renegotiation not refused with no_renegotiation (s_client exited: {exited})\n{out}\n{err}"
    );
    let s = fe.stats();
    eprintln!(
        "handshakes {}, handshake_errors {}",
        s.total.handshakes, s.total.handshake_errors
    );
    assert_eq!(
        s.total.handshakes, 1,
        "a second handshake was counted: {s:?}"
    );
    assert!(fe.is_running(), "{}", fe.output());
    legit_visit(&fe, "after a renegotiation attempt");
}

// ---------------------------------------------------------------------------
// 6. Sessions under another server name
// ---------------------------------------------------------------------------

fn session_stays_with_its_server_name(tickets: &str) {
    let pki = Pki::new();
    let leaves = SniLeaves::new(&pki);
    let dir = &leaves.dir;
    let mut opts = vec![("worker.count", "2"), ("tickets.enabled", tickets)];
    opts.extend(leaves.opts());
    let fe = start(&opts);
    let mut n = 0;
    for version in ["-tls1_2", "-tls1_3"] {
        // Each try gets a fresh a.example session (a stateful TLS 1.3
        // ticket is single-use, even when the resumption is refused).
        for (other, cn) in [
            ("b.example", "b.example"),
            ("c.example", "localhost"),
            ("a.example", "a.example"),
        ] {
            n += 1;
            let sess = dir.path().join(format!("a{n}.pem"));
            let out = s_client(
                fe.port,
                "a.example",
                &[version, "-ign_eof", "-sess_out", sess.to_str().unwrap()],
                b"GET / HTTP/1.0\r\n\r\n",
            );
            assert_eq!(lines_starting(&out, "New,"), 1, "{}", out.describe());
            assert!(
                served_subject(&out).contains("a.example"),
                "{}",
                out.describe()
            );
            let before = fe.stats();
            let out = s_client(
                fe.port,
                other,
                &[version, "-sess_in", sess.to_str().unwrap()],
                b"",
            );
            let after = fe.stats();
            let moved = |k: &str| {
                after.total.all.get(k).copied().unwrap_or(0)
                    - before.total.all.get(k).copied().unwrap_or(0)
            };
            let subject = served_subject(&out);
            let reused = lines_starting(&out, "Reused,") == 1;
            eprintln!(
                "tickets.enabled={tickets} {version}: a.example session offered under {other}: {} ({subject}); \
                 cache_hits +{} tickets_decrypted_current +{} resumed +{}",
                if reused { "Reused" } else { "New" },
                moved("cache_hits"),
                moved("tickets_decrypted_current"),
                moved("resumed_tls12") + moved("resumed_tls13"),
            );
            assert!(
                subject.contains(cn),
                "{version}: under {other} the server sent {subject:?}, expected {cn}\n{}",
                out.describe()
            );
            if other == "a.example" {
                assert!(
                    reused,
                    "{version}: the a.example session did not resume under a.example (control)\n{}",
                    out.describe()
                );
            } else {
                assert_eq!(
                    lines_starting(&out, "New,"),
                    1,
                    "{version}: the a.example session resumed under {other}\n{}",
                    out.describe()
                );
                assert_eq!(moved("resumed_tls12") + moved("resumed_tls13"), 0);
            }
        }
    }
}

#[test]
fn a_session_from_one_server_name_does_not_resume_under_another_with_tickets() {
    session_stays_with_its_server_name("1");
}

#[test]
fn a_session_from_one_server_name_does_not_resume_under_another_with_session_ids() {
    session_stays_with_its_server_name("0");
}

/// A client that completed its handshake and holds the connection open.
fn held_client(fe: &Frontend, what: &str) -> TlsClient {
    TlsClient::connect(
        fe.addr(),
        ClientSpec::new(Trust::AnyCert).build(),
        "localhost",
    )
    .unwrap_or_else(|e| panic!("{what}: {e}\n{}", fe.output()))
}

#[test]
fn past_limits_max_connections_a_new_client_is_closed_at_accept_while_the_open_ones_are_served() {
    let fe = start(&[("worker.count", "1"), ("limits.max_connections", "2")]);
    let mut first = held_client(&fe, "first of two allowed");
    let _second = held_client(&fe, "second of two allowed");

    // The third is accepted by the kernel and closed by tlsfront before any
    // byte of TLS: its handshake cannot complete.
    let third = TlsClient::connect(
        fe.addr(),
        ClientSpec::new(Trust::AnyCert).build(),
        "localhost",
    );
    assert!(
        third.is_err(),
        "a third connection past limits.max_connections = 2 was served\n{}",
        fe.output()
    );
    // The open ones are untouched.
    let (answer, _) = first.request(b"GET / HTTP/1.0\r\n\r\n", IO_TIMEOUT);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "an open connection must still be served: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let (stats, counted) = fe.wait_stats(STATS_WAIT, |s| stat(s, "rejected_over_limit") >= 1);
    assert!(counted, "the refusal is counted: {stats:?}");
    assert_eq!(stat(&stats, "rejected_over_limit"), 1, "{stats:?}");
}

#[test]
fn limits_max_connections_is_live_a_raised_limit_admits_the_next_client() {
    let fe = start(&[("worker.count", "1"), ("limits.max_connections", "1")]);
    let _held = held_client(&fe, "the one allowed");
    assert!(
        TlsClient::connect(
            fe.addr(),
            ClientSpec::new(Trust::AnyCert).build(),
            "localhost"
        )
        .is_err(),
        "a second connection past limits.max_connections = 1 was served"
    );
    let set = control::sysctl_write(&fe.socket, &["limits.max_connections=2"]);
    assert_eq!(set.code(), Some(0), "{}", set.describe());
    let _next = held_client(&fe, "the next client after raising the limit to 2");
}
