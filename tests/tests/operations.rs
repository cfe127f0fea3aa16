//! Operating a running tlsfront: `sysctl -w`, reload (SIGHUP and `tlsfront
//! reload`), draining on SIGTERM, the Prometheus endpoint, the PROXY
//! protocol towards a real nginx, and the access log. Real processes, real
//! clients, real signals.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tlsfront_tests::*;
use tlsfront_tests::{control::*, lifecycle::*, logs::*, nginx::*, prometheus::*, streaming::*};

/// Connects with `cfg`, sends `GET /` and reads to the end; returns the
/// client's own address (the `peer` tlsfront sees) and whether it resumed.
fn visit_from(
    fe_addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    output: &dyn Fn() -> String,
) -> (SocketAddr, bool) {
    let mut c = TlsClient::connect(fe_addr, cfg, "localhost")
        .unwrap_or_else(|e| panic!("handshake failed: {e}\n{}", output()));
    let me = c.sock.local_addr().unwrap();
    let (resp, end) = c.request(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", IO_TIMEOUT);
    assert!(
        is_http_200(&resp),
        "no HTTP 200 ({end:?}): {:?}\n{}",
        String::from_utf8_lossy(&resp),
        output()
    );
    (me, c.resumed())
}

/// A handshake with the tlsfront at `addr`, accepting any certificate;
/// panics with `output()` (the process's output) when it fails.
fn connect_any(addr: SocketAddr, output: &dyn Fn() -> String) -> TlsClient {
    TlsClient::connect(addr, ClientSpec::new(Trust::AnyCert).build(), "localhost")
        .unwrap_or_else(|e| panic!("{e}\n{}", output()))
}

/// Asserts that `p` exited with status 0 (`status` from [`Proc::wait_exit`]).
#[track_caller]
fn assert_exited_0(status: Option<std::process::ExitStatus>, p: &Proc) {
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit status {status:?}\n{}",
        p.output()
    );
}

/// The `handshake done` debug lines for the connection from `peer`.
fn handshake_debug_lines(stderr: &str, peer: SocketAddr) -> Vec<LogLine> {
    let peer = peer.to_string();
    log_lines(stderr)
        .into_iter()
        .filter(|l| l.message == "handshake done" && l.field("peer") == Some(peer.as_str()))
        .collect()
}

// ---------------------------------------------------------------------------
// 1. sysctl -w
// ---------------------------------------------------------------------------

#[test]
fn sysctl_w_changes_log_level_and_rotate_interval_of_the_running_process_on_every_worker() {
    let fe = Frontend::start(&[("worker.count", "2")]);
    let out_fn = || fe.output();
    let cfg = ClientSpec::new(Trust::AnyCert).build();

    // At info (the default) a handshake logs no debug line.
    let (peer, _) = visit_from(fe.addr(), cfg.clone(), &out_fn);
    thread::sleep(Duration::from_millis(200));
    assert!(
        handshake_debug_lines(&fe.stderr(), peer).is_empty(),
        "a debug line at log.level = info:\n{}",
        fe.output()
    );

    let w = sysctl_write(
        &fe.socket,
        &["log.level=debug", "tickets.rotate_interval=600"],
    );
    assert_eq!(
        w.code(),
        Some(0),
        "sysctl -w:\n{}\n{}",
        w.describe(),
        fe.output()
    );
    let printed = parse_sysctl(&w.stdout);
    assert_eq!(
        printed.get("log.level").map(String::as_str),
        Some("debug"),
        "{}",
        w.stdout
    );
    assert_eq!(
        printed.get("tickets.rotate_interval").map(String::as_str),
        Some("600s"),
        "{}",
        w.stdout
    );
    let read = sysctl_read(&fe.socket, &["tickets.rotate_interval", "log.level"]);
    assert_eq!(read["tickets.rotate_interval"], "600s", "{read:?}");
    assert_eq!(read["log.level"], "debug", "{read:?}");

    // Connections until both workers have logged a debug `handshake done`
    // for a connection of ours: the change reached every worker.
    let mut seen = std::collections::BTreeSet::new();
    let mut peers = 0;
    while seen.len() < 2 && peers < 100 {
        let (peer, _) = visit_from(fe.addr(), cfg.clone(), &out_fn);
        peers += 1;
        let ok = wait_until(Duration::from_secs(5), || {
            !handshake_debug_lines(&fe.stderr(), peer).is_empty()
        });
        assert!(
            ok,
            "no DEBUG `handshake done` line for {peer} at log.level = debug:\n{}",
            fe.output()
        );
        let lines = handshake_debug_lines(&fe.stderr(), peer);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert_eq!(lines[0].level, "DEBUG", "{lines:#?}");
        seen.insert(lines[0].field("worker").unwrap_or("?").to_string());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["0", "1"],
        "debug lines from both workers after {peers} connections\n{}",
        fe.output()
    );

    // Back to info: new connections log no debug line.
    let w = sysctl_write(&fe.socket, &["log.level=info"]);
    assert_eq!(w.code(), Some(0), "{}", w.describe());
    assert_eq!(parse_sysctl(&w.stdout)["log.level"], "info", "{}", w.stdout);
    let before = fe.stats().total.handshakes;
    let quiet: Vec<SocketAddr> = (0..8)
        .map(|_| visit_from(fe.addr(), cfg.clone(), &out_fn).0)
        .collect();
    let (s, ok) = fe.wait_stats(Duration::from_secs(5), |s| s.total.handshakes >= before + 8);
    assert!(ok, "the 8 handshakes were not counted: {s:?}");
    thread::sleep(Duration::from_millis(300));
    let err = fe.stderr();
    for peer in quiet {
        assert!(
            handshake_debug_lines(&err, peer).is_empty(),
            "debug line for {peer} after log.level = info:\n{}",
            fe.output()
        );
    }
    // The ticket rotation value stays as set.
    assert_eq!(
        sysctl_read(&fe.socket, &["tickets.rotate_interval"])["tickets.rotate_interval"],
        "600s"
    );
}

#[test]
fn sysctl_w_refuses_out_of_range_values_naming_the_key_and_the_running_value_stays() {
    let fe = Frontend::start(&[("worker.count", "1")]);
    for (assignment, key) in [
        ("proxy.buffer_size=0", "proxy.buffer_size"),
        ("limits.idle_timeout=0", "limits.idle_timeout"),
        (
            "upstream.connect_timeout=100000h",
            "upstream.connect_timeout",
        ),
    ] {
        let out = sysctl_write(&fe.socket, &[assignment]);
        assert_ne!(
            out.code(),
            Some(0),
            "sysctl -w {assignment} accepted\n{}",
            out.describe()
        );
        assert!(
            out.stderr.contains(&format!("key '{key}'")) && out.stderr.contains("out of range"),
            "sysctl -w {assignment}: the key and the range are not named\n{}",
            out.describe()
        );
    }
    let v = sysctl_read(
        &fe.socket,
        &[
            "proxy.buffer_size",
            "limits.idle_timeout",
            "upstream.connect_timeout",
        ],
    );
    assert_eq!(v["proxy.buffer_size"], "64k");
    assert_eq!(v["limits.idle_timeout"], "300s");
    assert_eq!(v["upstream.connect_timeout"], "5s");
    // New connections still get through with the running buffer size (a
    // buffer of 0 would have stalled them).
    let (resp, end) = https_get(
        fe.addr(),
        ClientSpec::new(Trust::AnyCert).build(),
        "localhost",
    )
    .unwrap_or_else(|e| panic!("handshake after the refused writes: {e}\n{}", fe.output()));
    assert!(is_http_200(&resp), "no HTTP 200 ({end:?})\n{}", fe.output());
}

#[test]
fn sysctl_w_refuses_restart_reload_unknown_and_bad_keys_and_a_refused_write_changes_nothing() {
    let fe = Frontend::start(&[("worker.count", "1")]);
    let sock = fe.socket.display().to_string();
    let snapshot = || {
        let out = tlsfront_cmd(&["sysctl", "--socket", &sock, "-a"]);
        assert_eq!(out.code(), Some(0), "{}", out.describe());
        out.stdout
    };
    let before = snapshot();

    let refused = |args: &[&str], needles: &[&str]| {
        let out = sysctl_write(&fe.socket, args);
        assert_ne!(
            out.code(),
            Some(0),
            "sysctl -w {args:?} was accepted:\n{}",
            out.describe()
        );
        for n in needles {
            assert!(
                out.stderr.contains(n),
                "sysctl -w {args:?}: stderr does not contain {n:?}:\n{}",
                out.describe()
            );
        }
        assert!(
            out.stdout.is_empty(),
            "sysctl -w {args:?} printed values:\n{}",
            out.describe()
        );
    };
    refused(
        &["net.listen=127.0.0.1:1"],
        &["key 'net.listen'", "needs restart"],
    );
    refused(&["tls.alpn=h2"], &["key 'tls.alpn'", "needs reload"]);
    refused(&["no.such.key=1"], &["key 'no.such.key'", "unknown key"]);
    refused(
        &["tickets.rotate_interval=soon"],
        &["key 'tickets.rotate_interval'", "not a duration"],
    );
    refused(&["log.level=loud"], &["key 'log.level'"]);
    // All or nothing: valid assignments before the bad one are not applied.
    refused(
        &[
            "log.level=debug",
            "tickets.rotate_interval=900",
            "net.listen=127.0.0.1:1",
        ],
        &["key 'net.listen'", "needs restart"],
    );
    refused(
        &["log.level=warn", "proxy.buffer_size=64q"],
        &["key 'proxy.buffer_size'"],
    );
    refused(
        &["log.level=debug", "tickets.rotate_interval=0"],
        &["tickets.rotate_interval"],
    );

    let after = snapshot();
    assert_eq!(
        before, after,
        "a refused sysctl -w changed the running configuration"
    );
    let v = sysctl_read(
        &fe.socket,
        &["log.level", "tickets.rotate_interval", "proxy.buffer_size"],
    );
    assert_eq!(v["log.level"], "info");
    assert_eq!(v["tickets.rotate_interval"], "3600s");
}

// ---------------------------------------------------------------------------
// 2. Reload with a new certificate
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Trigger {
    Sighup,
    Command,
}

fn conf_text(cert: &std::path::Path, key: &std::path::Path, upstream: &str) -> String {
    format!(
        "# reload test\ntls.cert = {}\ntls.key = {}\nupstream.addr = {upstream}\n",
        cert.display(),
        key.display()
    )
}

fn served_leaf(p: &Proc, pki: &Pki) -> CertificateDer<'static> {
    let c = TlsClient::connect(p.addr(), ClientSpec::new(pki.trust()).build(), "localhost")
        .unwrap_or_else(|e| panic!("new client: handshake failed: {e}\n{}", p.output()));
    c.leaf_der().expect("no certificate")
}

/// Reloads by `how`; checks that it succeeded, or (`expect_ok` false) that
/// it was refused naming `conf:line`.
fn trigger_reload(p: &Proc, how: Trigger, expect_ok: bool, conf: &std::path::Path, line: usize) {
    let located = format!("{}:{line}", conf.display());
    match how {
        Trigger::Command => {
            let out = reload_cmd(&p.socket);
            if expect_ok {
                assert_eq!(
                    out.code(),
                    Some(0),
                    "tlsfront reload:\n{}\n{}",
                    out.describe(),
                    p.output()
                );
                assert!(out.stdout.contains("reloaded"), "{}", out.describe());
            } else {
                assert_ne!(
                    out.code(),
                    Some(0),
                    "invalid file accepted:\n{}",
                    out.describe()
                );
                assert!(
                    out.stderr.contains("reload refused") && out.stderr.contains(&located),
                    "the refusal does not name {located}:\n{}",
                    out.describe()
                );
            }
        }
        Trigger::Sighup => {
            let before = p.stderr().len();
            p.signal(libc::SIGHUP);
            let needle = if expect_ok {
                "SIGHUP: reloaded".to_string()
            } else {
                "SIGHUP: reload refused".to_string()
            };
            let ok = wait_until(Duration::from_secs(10), || {
                p.stderr()[before..].contains(&needle)
            });
            assert!(ok, "no {needle:?} in the log after SIGHUP:\n{}", p.output());
            if !expect_ok {
                let tail = p.stderr()[before..].to_string();
                let line = tail.lines().find(|l| l.contains(&needle)).unwrap();
                assert!(
                    line.contains(&located),
                    "the SIGHUP refusal does not name {located}: {line}"
                );
                assert!(
                    line.contains("ERROR"),
                    "refusal not logged as an error: {line}"
                );
            }
        }
    }
}

fn reload_swaps_certificate_for_new_clients_keeps_old_stream(how: Trigger) {
    let pki = Pki::new();
    let dir = temp_dir();
    let (a, b, c) = (
        pki.leaf(&["localhost"]),
        pki.leaf(&["localhost"]),
        pki.leaf(&["localhost"]),
    );
    let (a_cert, a_key) = a.write(dir.path(), "a");
    let echo = Upstream::echo();
    let conf = dir.path().join("tlsfront.conf");
    std::fs::write(&conf, conf_text(&a_cert, &a_key, &echo.addr_string())).unwrap();
    let p = Proc::start(Some(&conf), &[]);
    assert!(
        served_leaf(&p, &pki) == a.der,
        "not serving certificate A at start"
    );

    // An old connection that keeps streaming throughout.
    let old = TlsClient::connect(p.addr(), ClientSpec::new(pki.trust()).build(), "localhost")
        .unwrap_or_else(|e| panic!("{e}\n{}", p.output()));
    assert!(old.leaf_der().unwrap() == a.der);
    let stream = Streamer::start(old, 77, 4096, Duration::from_millis(10));
    assert!(
        stream.wait_more_rounds(5, Duration::from_secs(10)),
        "the stream does not flow before the reload: {:?}\n{}",
        stream.error(),
        p.output()
    );

    // Certificate B: SIGHUP after pointing the file at new files; `tlsfront
    // reload` after overwriting the files the config names.
    match how {
        Trigger::Sighup => {
            let (b_cert, b_key) = b.write(dir.path(), "b");
            std::fs::write(&conf, conf_text(&b_cert, &b_key, &echo.addr_string())).unwrap();
        }
        Trigger::Command => {
            b.write(dir.path(), "a");
        }
    }
    trigger_reload(&p, how, true, &conf, 0);
    assert!(
        served_leaf(&p, &pki) == b.der,
        "a new client does not get certificate B after the reload\n{}",
        p.output()
    );
    assert!(
        stream.wait_more_rounds(20, Duration::from_secs(10)),
        "the old connection stopped echoing after the reload: {:?}\n{}",
        stream.error(),
        p.output()
    );

    // An invalid file (line 3 broken, naming certificate C) is refused and B
    // keeps serving.
    let (c_cert, c_key) = c.write(dir.path(), "c");
    std::fs::write(
        &conf,
        format!(
            "tls.cert = {}\ntls.key = {}\nthis line is broken\nupstream.addr = {}\n",
            c_cert.display(),
            c_key.display(),
            echo.addr_string()
        ),
    )
    .unwrap();
    trigger_reload(&p, how, false, &conf, 3);
    let now = served_leaf(&p, &pki);
    assert!(
        now == b.der,
        "after a refused reload the served certificate is not B (C: {})",
        now == c.der
    );
    assert!(
        stream.wait_more_rounds(10, Duration::from_secs(10)),
        "the old connection stopped echoing after the refused reload: {:?}\n{}",
        stream.error(),
        p.output()
    );
    let rounds = stream.rounds();
    let (old, err) = stream.stop();
    assert!(err.is_none(), "stream error: {err:?}");
    assert!(old.leaf_der().unwrap() == a.der);
    assert!(rounds >= 35, "{rounds}");
}

#[test]
fn sighup_reload_gives_new_clients_the_new_certificate_while_an_open_stream_continues() {
    reload_swaps_certificate_for_new_clients_keeps_old_stream(Trigger::Sighup);
}

#[test]
fn reload_command_gives_new_clients_the_new_certificate_while_an_open_stream_continues() {
    reload_swaps_certificate_for_new_clients_keeps_old_stream(Trigger::Command);
}

#[test]
fn certificate_reloads_while_16_clients_handshake_fail_none_and_later_clients_get_the_new_one() {
    let pki = Pki::new();
    let dir = temp_dir();
    let leaves = [pki.leaf(&["localhost"]), pki.leaf(&["localhost"])];
    let (cert, key) = leaves[0].write(dir.path(), "served");
    let conf = dir.path().join("tlsfront.conf");
    std::fs::write(
        &conf,
        format!(
            "tls.cert = {}\ntls.key = {}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let p = Proc::start(Some(&conf), &[("worker.count", "2")]);
    // 16 clients, each a full handshake (TLS 1.2 and 1.3) and a request
    // per connection, all through the reloads.
    let versions: Vec<Versions> = [Versions::Tls12, Versions::Tls13].repeat(8);
    let load = tlsfront_tests::load::LoadLoop::start(p.addr(), &versions, Some(1), Duration::ZERO);
    thread::sleep(Duration::from_millis(300));
    for round in 1..=6 {
        let leaf = &leaves[round % 2];
        leaf.write(dir.path(), "served");
        let out = reload_cmd(&p.socket);
        assert!(
            out.stdout.contains("reloaded"),
            "reload {round}: {}\n{}",
            out.describe(),
            p.output()
        );
        assert!(
            served_leaf(&p, &pki) == leaf.der,
            "reload {round}: a client that starts after it must get the new certificate"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let attempts = load.stop();
    let failed: Vec<_> = attempts.iter().filter(|a| !a.ok).collect();
    eprintln!(
        "{} connections through 6 certificate reloads, {} failed",
        attempts.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} connections failed across the reloads: {:?}\n{}",
        failed.len(),
        attempts.len(),
        failed
            .iter()
            .take(5)
            .map(|a| a.error.clone())
            .collect::<Vec<_>>(),
        p.output()
    );
    assert!(
        attempts.len() >= 100,
        "too little load to judge: {} connections",
        attempts.len()
    );
}

// ---------------------------------------------------------------------------
// 3. SIGTERM drains
// ---------------------------------------------------------------------------

#[test]
fn sigterm_lets_a_streaming_connection_finish_refuses_new_ones_and_exits_0() {
    const CHUNKS: usize = 5;
    const CHUNK: usize = 10_000;
    let echo = Upstream::echo();
    let mut p = Proc::start(
        None,
        &[
            ("upstream.addr", &echo.addr_string()),
            ("worker.drain_timeout", "10"),
        ],
    );
    let mut c = connect_any(p.addr(), &|| p.output());
    let (first_tx, first_rx) = mpsc::channel();
    let client = thread::spawn(move || -> Result<(Vec<u8>, Instant), String> {
        let mut got = Vec::new();
        let mut st = rustls::Stream::new(&mut c.conn, &mut c.sock);
        let data = Pattern::bytes(5, CHUNKS * CHUNK);
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            if i > 0 {
                thread::sleep(Duration::from_millis(200));
            }
            st.write_all(chunk)
                .map_err(|e| format!("chunk {i}: write: {e}"))?;
            let mut echo = vec![0u8; CHUNK];
            st.read_exact(&mut echo)
                .map_err(|e| format!("chunk {i}: read: {e}"))?;
            got.extend_from_slice(&echo);
            if i == 0 {
                let _ = first_tx.send(());
            }
        }
        st.conn.send_close_notify();
        st.flush().map_err(|e| format!("close_notify: {e}"))?;
        let mut rest = Vec::new();
        st.read_to_end(&mut rest)
            .map_err(|e| format!("after close_notify: {e}"))?;
        got.extend_from_slice(&rest);
        Ok((got, Instant::now()))
    });
    first_rx
        .recv_timeout(IO_TIMEOUT)
        .unwrap_or_else(|_| panic!("first chunk not echoed\n{}", p.output()));
    let term = Instant::now();
    p.signal(libc::SIGTERM);
    assert!(
        p.wait_stderr("draining", Duration::from_secs(5)),
        "no draining line\n{}",
        p.output()
    );
    // The listeners are shut down right after that line is written.
    thread::sleep(Duration::from_millis(100));

    // A new connection is refused while the old one drains.
    match TcpStream::connect_timeout(&p.addr(), Duration::from_secs(2)) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(s) => {
            let mut s = s;
            let (got, end) = read_until_closed(&mut s, Duration::from_secs(3));
            panic!(
                "a connection after SIGTERM was accepted (then {end:?}, {} bytes)\n{}",
                got.len(),
                p.output()
            );
        }
    }

    let (got, ended) = client
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the stream broke during the drain: {e}\n{}", p.output()));
    assert_eq!(got.len(), CHUNKS * CHUNK);
    assert!(
        got == Pattern::bytes(5, CHUNKS * CHUNK),
        "echoed bytes differ"
    );
    let status = p.wait_exit(Duration::from_secs(5));
    let exited = Instant::now();
    assert_exited_0(status, &p);
    assert!(
        exited.duration_since(ended) < Duration::from_secs(3)
            && exited.duration_since(term) < Duration::from_secs(8),
        "exited {:?} after the stream ended, {:?} after SIGTERM (worker.drain_timeout = 10)",
        exited.duration_since(ended),
        exited.duration_since(term)
    );
    assert!(!p.stderr().contains("drain time over"), "{}", p.output());
}

#[test]
fn sigterm_closes_an_idle_connection_after_drain_timeout_and_exits_0() {
    let echo = Upstream::echo();
    let mut p = Proc::start(
        None,
        &[
            ("upstream.addr", &echo.addr_string()),
            ("worker.drain_timeout", "1"),
        ],
    );
    let mut c = connect_any(p.addr(), &|| p.output());
    {
        let mut st = rustls::Stream::new(&mut c.conn, &mut c.sock);
        st.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        st.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
    }
    let term = Instant::now();
    p.signal(libc::SIGTERM);
    let (_, end) = read_until_closed(&mut c.sock, Duration::from_secs(10));
    let closed = term.elapsed();
    assert!(
        end.is_ok() || end == Err(std::io::ErrorKind::ConnectionReset),
        "the idle connection was not closed within 10 s: {end:?}\n{}",
        p.output()
    );
    assert!(
        closed >= Duration::from_millis(800) && closed < Duration::from_secs(4),
        "the idle connection closed {closed:?} after SIGTERM (worker.drain_timeout = 1)\n{}",
        p.output()
    );
    let status = p.wait_exit(Duration::from_secs(5));
    assert_exited_0(status, &p);
    assert!(
        term.elapsed() < Duration::from_secs(5),
        "exit {:?} after SIGTERM",
        term.elapsed()
    );
    assert!(p.stderr().contains("drain time over"), "{}", p.output());
}

// ---------------------------------------------------------------------------
// 4. Prometheus
// ---------------------------------------------------------------------------

fn start_with_metrics(opts: &[(&str, &str)]) -> (Frontend, SocketAddr) {
    // Held until tlsfront has bound metrics.listen (before `ready`): no
    // other test can take the port meanwhile, and a start failure shows.
    let port = ReservedPort::new();
    let listen = port.addr_string();
    let mut all = opts.to_vec();
    all.push(("metrics.listen", &listen));
    (Frontend::start(&all), port.addr())
}

#[test]
fn metrics_endpoint_serves_valid_prometheus_text_counting_what_the_clients_did() {
    let (fe, metrics) = start_with_metrics(&[("worker.count", "2")]);
    let out_fn = || fe.output();
    let tls12 = resuming_client_config(&ClientSpec::new(Trust::AnyCert).versions(Versions::Tls12));
    let tls13 = resuming_client_config(&ClientSpec::new(Trust::AnyCert).versions(Versions::Tls13));
    let tls12_id = {
        let mut cfg =
            (*resuming_client_config(&ClientSpec::new(Trust::AnyCert).versions(Versions::Tls12)))
                .clone();
        cfg.resumption = cfg
            .resumption
            .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
        Arc::new(cfg)
    };
    for (what, cfg) in [
        ("TLS 1.2 ticket", &tls12),
        ("TLS 1.3", &tls13),
        ("TLS 1.2 session ID", &tls12_id),
    ] {
        let resumed: Vec<bool> = (0..3)
            .map(|_| visit_from(fe.addr(), cfg.clone(), &out_fn).1)
            .collect();
        assert_eq!(
            resumed,
            [false, true, true],
            "{what}: which handshakes resumed\n{}",
            fe.output()
        );
    }
    let (stats, ok) = fe.wait_stats(Duration::from_secs(5), |s| {
        s.total.handshakes == 9 && s.total.active == 0
    });
    assert!(ok, "{stats:?}");

    let (head, body) = http_get(metrics, "/metrics")
        .unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", fe.output()));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );

    // A third-party parser reads every line ...
    let ignored: Vec<&str> = body
        .lines()
        .filter(|l| {
            matches!(
                prometheus_parse::LineInfo::parse(l),
                prometheus_parse::LineInfo::Ignored
            )
        })
        .collect();
    assert!(
        ignored.is_empty(),
        "lines prometheus-parse cannot read: {ignored:#?}"
    );
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("prometheus-parse: {e}\n{body}"));
    let hist: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "tlsfront_handshake_duration_seconds")
        .collect();
    assert_eq!(hist.len(), 2, "one histogram per worker: {hist:#?}");
    for h in &hist {
        let prometheus_parse::Value::Histogram(buckets) = &h.value else {
            panic!("not a histogram: {h:?}")
        };
        assert!(
            buckets.iter().any(|b| b.less_than == f64::INFINITY),
            "no +Inf bucket: {h:?}"
        );
    }
    // ... and the strict check finds nothing wrong.
    let m = check_prometheus_text(&body)
        .unwrap_or_else(|errs| panic!("invalid exposition:\n{errs:#?}\n{body}"));

    let ty = |f: &str| m.types.get(f).map(String::as_str);
    assert_eq!(ty("tlsfront_handshakes_total"), Some("counter"));
    assert_eq!(ty("tlsfront_handshake_duration_seconds"), Some("histogram"));
    assert_eq!(ty("tlsfront_active_connections"), Some("gauge"));
    assert_eq!(ty("tlsfront_build_info"), Some("gauge"));
    assert_eq!(ty("tlsfront_resumptions_total"), Some("counter"));
    for s in m.select("tlsfront_handshakes_total", &[]) {
        for l in ["result", "version", "worker"] {
            assert!(s.label(l).is_some(), "{s:?} has no label {l}");
        }
        assert!(["0", "1"].contains(&s.label("worker").unwrap()), "{s:?}");
    }
    let hs = |result: &str, version: &str| {
        m.sum(
            "tlsfront_handshakes_total",
            &[("result", result), ("version", version)],
        )
    };
    assert_eq!(hs("full", "1.2"), 2.0, "full TLS 1.2");
    assert_eq!(hs("resumed", "1.2"), 4.0, "resumed TLS 1.2");
    assert_eq!(hs("full", "1.3"), 1.0, "full TLS 1.3");
    assert_eq!(hs("resumed", "1.3"), 2.0, "resumed TLS 1.3");
    assert_eq!(hs("error", "unknown"), 0.0, "handshake errors");
    let res = |mech: &str| m.sum("tlsfront_resumptions_total", &[("mechanism", mech)]);
    assert_eq!(res("tls12_ticket"), 2.0);
    assert_eq!(res("tls12_session_id"), 2.0);
    assert_eq!(res("tls13_ticket"), 2.0);
    assert_eq!(res("tls13_stateful"), 0.0);
    assert_eq!(m.sum("tlsfront_handshake_duration_seconds_count", &[]), 9.0);
    assert_eq!(
        m.sum(
            "tlsfront_handshake_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        9.0
    );
    assert!(m.sum("tlsfront_handshake_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(m.select("tlsfront_active_connections", &[]).len(), 2);
    assert_eq!(m.sum("tlsfront_active_connections", &[]), 0.0);
    let build = m.select("tlsfront_build_info", &[]);
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0].value, 1.0);
    assert!(
        !build[0].label("version").unwrap_or("").is_empty(),
        "{build:?}"
    );
    assert_eq!(m.sum("tlsfront_accepted_total", &[]), 9.0);
    // The shared cache served the two session-ID resumptions; the ring
    // opened the four tickets and sealed at least one per full handshake.
    for f in [
        "tlsfront_cache_hits_total",
        "tlsfront_cache_inserts_total",
        "tlsfront_tickets_issued_total",
    ] {
        assert_eq!(ty(f), Some("counter"), "{f}");
    }
    assert!(m.sum("tlsfront_cache_hits_total", &[]) >= 2.0, "cache hits");
    assert!(
        m.sum("tlsfront_cache_inserts_total", &[]) >= 1.0,
        "cache inserts"
    );
    assert!(
        m.sum("tlsfront_tickets_issued_total", &[]) >= 2.0,
        "tickets issued"
    );
    let opened: f64 = ["current", "previous", "older", "next"]
        .iter()
        .map(|k| m.sum(&format!("tlsfront_tickets_decrypted_{k}_total"), &[]))
        .sum();
    assert_eq!(
        opened, 4.0,
        "tickets decrypted (2 TLS 1.2 + 2 TLS 1.3 resumptions)"
    );
    assert_eq!(m.sum("tlsfront_tickets_decrypt_failures_total", &[]), 0.0);
}

// ---------------------------------------------------------------------------
// 5. PROXY protocol to a real nginx
// ---------------------------------------------------------------------------

fn proxy_protocol_reaches_nginx(version: &str) {
    let nginx = Nginx::start().unwrap_or_else(|e| panic!("nginx: {e}"));
    let fe = Frontend::start(&[
        ("upstream.addr", &nginx.addr_string()),
        ("upstream.proxy_protocol", version),
        ("worker.count", "1"),
    ]);
    for _ in 0..2 {
        let mut c = connect_any(fe.addr(), &|| fe.output());
        let me = c.sock.local_addr().unwrap();
        let (resp, end) = c.request(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", IO_TIMEOUT);
        let text = String::from_utf8_lossy(&resp).into_owned();
        assert!(
            is_http_200(&resp),
            "PROXY v{version}: no 200 from nginx ({end:?}): {text:?}\n{}\n--- nginx error.log ---\n{}",
            fe.output(),
            nginx.error_log()
        );
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        assert_eq!(
            body,
            format!("pp=127.0.0.1:{}\n", me.port()),
            "PROXY v{version}: nginx saw another client address"
        );
    }
    assert!(
        !nginx.error_log().contains("broken header"),
        "{}",
        nginx.error_log()
    );
}

#[test]
fn proxy_protocol_v1_gives_nginx_the_clients_address_and_port() {
    proxy_protocol_reaches_nginx("1");
}

#[test]
fn proxy_protocol_v2_gives_nginx_the_clients_address_and_port() {
    proxy_protocol_reaches_nginx("2");
}

// ---------------------------------------------------------------------------
// 6. Access log
// ---------------------------------------------------------------------------

/// One connection: `IN` bytes up, the upstream answers `OUT` bytes and
/// closes; the client closes cleanly. Returns its address and whether it
/// resumed.
fn access_exchange(
    fe: &Frontend,
    cfg: Arc<rustls::ClientConfig>,
    seed: u64,
) -> (SocketAddr, bool, u64, u64) {
    let mut c = TlsClient::connect(fe.addr(), cfg, "localhost")
        .unwrap_or_else(|e| panic!("{e}\n{}", fe.output()));
    let me = c.sock.local_addr().unwrap();
    let request = Pattern::bytes(seed, ACCESS_IN);
    let (resp, end) = c.request(&request, IO_TIMEOUT);
    assert_eq!(end, End::CloseNotify, "{}", fe.output());
    assert_eq!(
        resp,
        Pattern::bytes(seed + 1000, ACCESS_OUT),
        "the upstream's answer"
    );
    c.conn.send_close_notify();
    while c.conn.wants_write() {
        if c.conn.write_tls(&mut c.sock).is_err() {
            break;
        }
    }
    let _ = c.sock.shutdown(Shutdown::Write);
    let resumed = c.resumed();
    drop(c);
    (me, resumed, ACCESS_IN as u64, ACCESS_OUT as u64)
}

const ACCESS_IN: usize = 100;
const ACCESS_OUT: usize = 2500;

/// An upstream that reads `ACCESS_IN` bytes (the pattern of a seed from 1 to
/// 16), answers `ACCESS_OUT` bytes of the pattern of seed + 1000, and closes
/// its write side.
fn access_upstream() -> Upstream {
    Upstream::start(|mut s| {
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let mut req = vec![0u8; ACCESS_IN];
        if s.read_exact(&mut req).is_err() {
            return;
        }
        let seed = (1..=16)
            .find(|&k| Pattern::bytes(k, ACCESS_IN) == req)
            .unwrap_or(0);
        let _ = s.write_all(&Pattern::bytes(seed + 1000, ACCESS_OUT));
        let _ = s.shutdown(Shutdown::Write);
        let mut sink = [0u8; 1024];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    })
}

fn access_log_full_then_resumed(tickets: bool, expect_resumed: &str) {
    let up = access_upstream();
    let fe = Frontend::start(&[
        ("log.access", "1"),
        ("upstream.addr", &up.addr_string()),
        ("tls.alpn", "h2,http/1.1"),
        ("tickets.enabled", if tickets { "1" } else { "0" }),
        ("worker.count", "2"),
    ]);
    let cfg = resuming_client_config(
        &ClientSpec::new(Trust::AnyCert)
            .versions(Versions::Tls12)
            .alpn(&["http/1.1"]),
    );
    let mut seen = Vec::new();
    for (seed, expect) in [(1u64, "full"), (2, expect_resumed)] {
        let (peer, resumed, sent, received) = access_exchange(&fe, cfg.clone(), seed);
        assert_eq!(
            resumed,
            expect != "full",
            "client-side resumption of connection {seed}"
        );
        let l = access_line_for(&fe, peer);
        let f = |k: &str| {
            l.field(k)
                .unwrap_or_else(|| panic!("no field {k} in {}", l.raw))
                .to_string()
        };
        assert_eq!(l.level, "INFO", "{}", l.raw);
        assert_eq!(l.message, "access", "{}", l.raw);
        assert_eq!(f("client"), peer.to_string(), "{}", l.raw);
        assert_eq!(f("sni"), "localhost", "{}", l.raw);
        assert_eq!(f("alpn"), "http/1.1", "{}", l.raw);
        assert_eq!(f("version"), "TLSv1.2", "{}", l.raw);
        assert_eq!(f("resumed"), expect, "{}", l.raw);
        assert_eq!(f("bytes_in"), sent.to_string(), "{}", l.raw);
        assert_eq!(f("bytes_out"), received.to_string(), "{}", l.raw);
        assert!(["0", "1"].contains(&f("worker").as_str()), "{}", l.raw);
        assert!(f("ms").parse::<u64>().is_ok(), "{}", l.raw);
        seen.push(l.raw);
    }
    let all: Vec<LogLine> = log_lines(&fe.stderr())
        .into_iter()
        .filter(|l| l.target == "tlsfront::access")
        .collect();
    assert_eq!(all.len(), 2, "one access line per connection: {all:#?}");
}

#[test]
fn access_log_has_one_line_per_tls12_connection_full_then_ticket_resumption() {
    access_log_full_then_resumed(true, "ticket");
}

#[test]
fn access_log_has_one_line_per_tls12_connection_full_then_session_id_resumption_without_tickets() {
    access_log_full_then_resumed(false, "id");
}

// ---------------------------------------------------------------------------
// Further operational behaviours
// ---------------------------------------------------------------------------

#[test]
fn sysctl_w_upstream_proxy_protocol_applies_to_the_next_connection_of_the_running_process() {
    let nginx = Nginx::start().unwrap_or_else(|e| panic!("nginx: {e}"));
    let fe = Frontend::start(&[
        ("upstream.addr", &nginx.addr_string()),
        ("worker.count", "2"),
    ]);
    let get = || {
        let mut c = connect_any(fe.addr(), &|| fe.output());
        let me = c.sock.local_addr().unwrap();
        let (resp, _) = c.request(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", IO_TIMEOUT);
        (me, String::from_utf8_lossy(&resp).into_owned())
    };
    // Without the header nginx refuses the connection: it answers nothing
    // and logs "broken header". Any other failure is not this one.
    let (_, resp) = get();
    assert!(
        resp.is_empty(),
        "nginx answered without a PROXY header: {resp:?}"
    );
    assert!(
        wait_until(IO_TIMEOUT, || nginx.error_log().contains("broken header")),
        "nginx did not log a broken PROXY header:\n{}",
        nginx.error_log()
    );
    let w = sysctl_write(&fe.socket, &["upstream.proxy_protocol=2"]);
    assert_eq!(w.code(), Some(0), "{}", w.describe());
    // Every following connection, whichever worker takes it, sends it.
    for _ in 0..6 {
        let (me, resp) = get();
        assert!(
            resp.ends_with(&format!("\r\n\r\npp=127.0.0.1:{}\n", me.port())),
            "after sysctl -w upstream.proxy_protocol=2: {resp:?}\n{}\n{}",
            fe.output(),
            nginx.error_log()
        );
    }
}

#[test]
fn reload_keeps_restart_only_keys_running_and_says_which() {
    let dir = temp_dir();
    let conf = write_file(
        dir.path(),
        "tlsfront.conf",
        "net.backlog = 1024\nproxy.buffer_size = 64k\n",
    );
    let p = Proc::start(Some(&conf), &[]);
    std::fs::write(&conf, "net.backlog = 77\nproxy.buffer_size = 32k\n").unwrap();
    let out = reload_cmd(&p.socket);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.describe(), p.output());
    assert!(
        out.stdout
            .contains("needs restart, kept: net.backlog (running 1024, file says 77)"),
        "{}",
        out.describe()
    );
    let v = sysctl_read(&p.socket, &["net.backlog", "proxy.buffer_size"]);
    assert_eq!(
        v["net.backlog"], "1024",
        "a restart-only key changed on reload"
    );
    assert_eq!(v["proxy.buffer_size"], "32k", "a live key was not reloaded");
}

#[test]
fn sigint_drains_like_sigterm_and_exits_0() {
    let echo = Upstream::echo();
    let mut p = Proc::start(
        None,
        &[
            ("upstream.addr", &echo.addr_string()),
            ("worker.drain_timeout", "5"),
        ],
    );
    let mut c = connect_any(p.addr(), &|| p.output());
    p.signal(libc::SIGINT);
    assert!(
        p.wait_stderr("draining", Duration::from_secs(5)),
        "{}",
        p.output()
    );
    let mut st = rustls::Stream::new(&mut c.conn, &mut c.sock);
    st.write_all(b"still here").unwrap();
    let mut b = [0u8; 10];
    st.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still here");
    st.conn.send_close_notify();
    st.flush().unwrap();
    let mut rest = Vec::new();
    let _ = st.read_to_end(&mut rest);
    let status = p.wait_exit(Duration::from_secs(4));
    assert_exited_0(status, &p);
}

#[test]
fn sysctl_w_worker_drain_timeout_sets_how_long_the_next_drain_waits() {
    let echo = Upstream::echo();
    let mut p = Proc::start(
        None,
        &[
            ("upstream.addr", &echo.addr_string()),
            ("worker.drain_timeout", "60"),
        ],
    );
    let w = sysctl_write(&p.socket, &["worker.drain_timeout=1"]);
    assert_eq!(w.code(), Some(0), "{}", w.describe());
    assert_eq!(
        parse_sysctl(&w.stdout)["worker.drain_timeout"],
        "1s",
        "{}",
        w.stdout
    );
    let mut c = connect_any(p.addr(), &|| p.output());
    let term = Instant::now();
    p.signal(libc::SIGTERM);
    let (_, end) = read_until_closed(&mut c.sock, Duration::from_secs(10));
    assert!(
        end.is_ok() || end == Err(std::io::ErrorKind::ConnectionReset),
        "the idle connection was still open 10 s after SIGTERM: {end:?}\n{}",
        p.output()
    );
    let status = p.wait_exit(Duration::from_secs(5));
    let took = term.elapsed();
    assert_exited_0(status, &p);
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM with worker.drain_timeout set to 1 s (started with 60 s)"
    );
}
