//! `tlsload`: a TLS handshake load generator (rustls client, aws-lc-rs).
//!
//! Every loop (`--threads` × `--concurrency` of them, one OS thread each,
//! blocking std sockets) opens connections one after the other: connect,
//! handshake, optionally write `--request` bytes and read `--response` bytes,
//! close_notify, close. In the resumption modes each loop keeps its own
//! session store, so its first handshake is full and every later one must
//! resume; tlsload checks that it did (`handshake_kind()`) and reports the
//! resumed fraction, so a server that silently falls back to full handshakes
//! shows below 100 %.
//!
//! Key exchange is pinned to X25519 (P-256 is listed second only because
//! OpenSSL wants it listed with a P-256 certificate; a connection that used
//! it counts as an error) and the cipher suites to
//! TLS13_AES_128_GCM_SHA256 / ECDHE-{ECDSA,RSA}-AES128-GCM-SHA256, so that
//! every server under test does the same cryptography.
//!
//! `--rate R` turns the closed loops into an open one: connection i starts
//! at i/R seconds (whichever loop is free takes it), and the latency is
//! counted from that intended start, so a server that falls behind shows
//! its queue in the percentiles instead of slowing the client down
//! (no coordinated omission, as long as enough loops are free: the JSON
//! says how many starts were late).
//!
//! Mode `plain` is the same loop without TLS (the plain TCP proxy floor).
//!
//! `tlsload bulk` moves `--bytes` through the proxy in one TLS connection,
//! down (upstream to client) or up, and reports MB per server CPU-second;
//! `tlsload idle` opens `--connections` TLS connections, sends one request
//! on each, keeps them open and reports the growth of the server's
//! `RssAnon` and its wake-ups while they are idle (see [`tlsfront_bench::procfs`]).
//!
//! `tlsload upstream --listen ADDR --request N --response M` is the tiny
//! upstream for proxy benchmarks: per connection it reads N bytes, writes M
//! bytes, then waits for EOF. With `--bulk` a connection that starts with
//! the bulk header (`TLSBULK1`, `D` or `U`, a big-endian u64 length) is a
//! bulk transfer instead: the upstream writes that many bytes, or reads
//! them and answers one byte.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use hdrhistogram::Histogram;
use rustls::client::{ClientSessionMemoryCache, Resumption, Tls12Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind};
use tlsfront_bench::procfs;
use tlsfront_bench::{accept_anything_config, pinned_provider, AcceptAnything, Mode};

const USAGE: &str = "\
usage:
  tlsload MODE --connect ADDR [options]
  tlsload bulk --connect ADDR --bytes N [--direction down,up] [--count K] [--tls 1.2|1.3]
               [--server-pid PID]... [--json FILE] [--label TEXT] [--server-name NAME]
  tlsload idle --connect ADDR [--connections N] [--hold SECS] [--settle SECS] [--threads T]
               [--request N] [--response M] [--server-pid PID]... [--json FILE] [--label TEXT]
  tlsload upstream --listen ADDR [--request N] [--response M] [--threads T] [--bulk]

MODE: full12 | full13 | resume-id12 | resume-ticket12 | resume13 | plain
  full12           TLS 1.2, no resumption offered
  full13           TLS 1.3, no resumption offered
  resume-id12      TLS 1.2, resumes by session ID (the client offers no tickets)
  resume-ticket12  TLS 1.2, resumes by session ticket
  resume13         TLS 1.3, resumes with a PSK (ticket)
  plain            no TLS: connect, request, response, close (the TCP proxy floor;
                   the handshake latency is the connect)

bulk: one TLS connection per transfer (full handshake, then --bytes each way
  asked for: down = the upstream sends, up = the client sends and the upstream
  answers one byte); MB (10^6 bytes) per second and per server CPU-second per
  direction. Needs `tlsload upstream --bulk` behind the proxy. Accepts any
  certificate.
idle: opens --connections (default 10000) TLS 1.3 connections with --threads
  (default 4) loops, one request/response on each, keeps them open --hold
  seconds (default 5) after --settle (default 1); reports the growth of the
  server's RssAnon per connection and its wake-ups per second while idle
  (before the connections and with them), and how many the server closed.
  Accepts any certificate; raise `ulimit -n` first.

options:
  --connect ADDR         server address (host:port)
  --server-name NAME     SNI and name checked in the certificate (default localhost)
  --ca FILE              trust the PEM certificates in FILE
  --insecure             accept any certificate, verify no signature (cheapest client)
  --threads N            threads (default 1)
  --concurrency N        sequential-connection loops per thread (default 1); every loop
                         is one OS thread, so there are threads x concurrency of them
  --duration SECS        run this long (default 5)
  --rate R               offered load: start R connections per second in all (open loop;
                         latency counted from each connection's intended start)
  --count N              or stop after N connections in total
  --request BYTES        bytes written after the handshake (default 0)
  --response BYTES       bytes read after the request (default 0); with resume13 and
                         --response 0 one read waits for the server's tickets
  --timeout SECS         per-connection socket timeout (default 10)
  --server-pid PID       measure this process's CPU time (utime+stime, all threads);
                         repeatable: for nginx give the master and every worker
  --json FILE            write the results as JSON too
  --label TEXT           copied into the JSON (e.g. server name)
  --quiet                no human summary on stdout

upstream:
  --bulk                 also serve bulk transfers (tlsload bulk); --request must then
                         be 0 or at least the 17-byte bulk header";

/// The modes of the command line: all but `resume13-stateful`, which
/// differs from `resume13` only on the server (bench/compare.sh).
fn parse_mode(s: &str) -> Option<Mode> {
    Mode::parse(s).filter(|m| *m != Mode::Resume13Stateful)
}

struct Opts {
    mode: Mode,
    connect: SocketAddr,
    server_name: String,
    ca: Option<String>,
    insecure: bool,
    threads: usize,
    concurrency: usize,
    duration: Duration,
    rate: Option<f64>,
    count: Option<u64>,
    request: usize,
    response: usize,
    timeout: Duration,
    server_pids: Vec<u32>,
    json: Option<String>,
    label: String,
    quiet: bool,
}

fn die(msg: impl std::fmt::Display) -> ! {
    eprintln!("tlsload: error: {msg}");
    std::process::exit(2)
}

fn value<T: std::str::FromStr>(it: &mut impl Iterator<Item = String>, flag: &str) -> T {
    let v = it
        .next()
        .unwrap_or_else(|| die(format!("{flag} needs a value")));
    v.parse()
        .unwrap_or_else(|_| die(format!("{flag}: bad value {v:?}")))
}

fn resolve(addr: &str) -> SocketAddr {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| die(format!("cannot resolve {addr:?}")))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next().unwrap_or_else(|| {
        eprintln!("{USAGE}");
        std::process::exit(2)
    });
    if first == "-h" || first == "--help" {
        println!("{USAGE}");
        return;
    }
    let sub: Option<fn(std::iter::Skip<std::env::Args>) -> Result<()>> = match first.as_str() {
        "upstream" => Some(upstream),
        "bulk" => Some(bulk),
        "idle" => Some(idle),
        _ => None,
    };
    if let Some(sub) = sub {
        if let Err(e) = sub(args) {
            die(format!("{first}: {e:#}"));
        }
        return;
    }
    let mode =
        parse_mode(&first).unwrap_or_else(|| die(format!("unknown mode {first:?}\n{USAGE}")));
    let mut o = Opts {
        mode,
        connect: "127.0.0.1:8443".parse().unwrap(),
        server_name: "localhost".into(),
        ca: None,
        insecure: false,
        threads: 1,
        concurrency: 1,
        duration: Duration::from_secs(5),
        rate: None,
        count: None,
        request: 0,
        response: 0,
        timeout: Duration::from_secs(10),
        server_pids: Vec::new(),
        json: None,
        label: String::new(),
        quiet: false,
    };
    let mut connect_given = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--connect" => {
                o.connect = resolve(&value::<String>(&mut args, &a));
                connect_given = true;
            }
            "--server-name" => o.server_name = value(&mut args, &a),
            "--ca" => o.ca = Some(value(&mut args, &a)),
            "--insecure" => o.insecure = true,
            "--threads" => o.threads = value(&mut args, &a),
            "--concurrency" => o.concurrency = value(&mut args, &a),
            "--duration" => o.duration = Duration::from_secs_f64(value(&mut args, &a)),
            "--rate" => o.rate = Some(value(&mut args, &a)),
            "--count" => o.count = Some(value(&mut args, &a)),
            "--request" => o.request = value(&mut args, &a),
            "--response" => o.response = value(&mut args, &a),
            "--timeout" => o.timeout = Duration::from_secs_f64(value(&mut args, &a)),
            "--server-pid" => o.server_pids.push(value(&mut args, &a)),
            "--json" => o.json = Some(value(&mut args, &a)),
            "--label" => o.label = value(&mut args, &a),
            "--quiet" => o.quiet = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            _ => die(format!("unknown option {a:?}\n{USAGE}")),
        }
    }
    if !connect_given {
        die("--connect ADDR is required");
    }
    if o.ca.is_none() && !o.insecure {
        die("give --ca FILE or --insecure");
    }
    if o.threads == 0 || o.concurrency == 0 {
        die("--threads and --concurrency must be at least 1");
    }
    if matches!(o.rate, Some(r) if !(r > 0.0 && r.is_finite())) {
        die("--rate must be a positive number of connections per second");
    }
    run(o);
}

// ---------------------------------------------------------------- client config

fn provider() -> CryptoProvider {
    // Every connection checks that X25519 was used (see pinned_provider).
    pinned_provider()
}

/// The base config; each loop clones it and gives it its own session store.
fn base_config(o: &Opts) -> ClientConfig {
    let provider = Arc::new(provider());
    let version: &'static rustls::SupportedProtocolVersion = if o.mode.tls13() {
        &rustls::version::TLS13
    } else {
        &rustls::version::TLS12
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap_or_else(|e| die(format!("client config: {e}")));
    let mut config = if o.insecure {
        let schemes = provider
            .signature_verification_algorithms
            .supported_schemes();
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(schemes)))
            .with_no_client_auth()
    } else {
        let path = o.ca.as_deref().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            CertificateDer::pem_file_iter(path).unwrap_or_else(|e| die(format!("{path}: {e}")))
        {
            let cert = cert.unwrap_or_else(|e| die(format!("{path}: {e}")));
            roots
                .add(cert)
                .unwrap_or_else(|e| die(format!("{path}: {e}")));
        }
        if roots.is_empty() {
            die(format!("{path}: no certificate"));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.resumption = Resumption::disabled();
    config
}

fn loop_config(base: &ClientConfig, mode: Mode) -> Arc<ClientConfig> {
    let mut c = base.clone();
    c.resumption = match mode {
        Mode::Full12 | Mode::Full13 | Mode::Plain => Resumption::disabled(),
        Mode::ResumeId12 => Resumption::store(Arc::new(ClientSessionMemoryCache::new(4)))
            .tls12_resumption(Tls12Resumption::SessionIdOnly),
        Mode::ResumeTicket12 | Mode::Resume13 | Mode::Resume13Stateful => {
            Resumption::store(Arc::new(ClientSessionMemoryCache::new(4)))
                .tls12_resumption(Tls12Resumption::SessionIdOrTickets)
        }
    };
    Arc::new(c)
}

// ---------------------------------------------------------------- one connection

struct Failure {
    kind: String,
}

/// The server closed before the whole response came.
fn closed_early() -> Failure {
    Failure {
        kind: "response: closed early".into(),
    }
}

fn io_kind(stage: &str, e: &io::Error) -> Failure {
    let detail = match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => format!("tls {tls:?}"),
        None => format!("{:?}", e.kind()),
    };
    Failure {
        kind: format!("{stage}: {detail}"),
    }
}

struct Done {
    kind: Option<HandshakeKind>,
    handshake: Duration,
    total: Duration,
}

fn one_connection(
    o: &Opts,
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    request: &[u8],
    buf: &mut [u8],
) -> Result<Done, Failure> {
    let t0 = Instant::now();
    let mut sock =
        TcpStream::connect_timeout(&o.connect, o.timeout).map_err(|e| io_kind("connect", &e))?;
    let _ = sock.set_nodelay(true);
    let _ = sock.set_read_timeout(Some(o.timeout));
    let _ = sock.set_write_timeout(Some(o.timeout));
    if o.mode == Mode::Plain {
        return plain_exchange(o, sock, t0, request, buf);
    }
    let mut conn = ClientConnection::new(config.clone(), name.clone()).map_err(|e| Failure {
        kind: format!("client: {e:?}"),
    })?;
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok((0, 0)) => {
                return Err(Failure {
                    kind: "handshake: eof".into(),
                })
            }
            Ok(_) => {}
            Err(e) => return Err(io_kind("handshake", &e)),
        }
    }
    let handshake = t0.elapsed();
    let kind = conn.handshake_kind();
    if let Some(group) = conn.negotiated_key_exchange_group() {
        if group.name() != rustls::NamedGroup::X25519 {
            return Err(Failure {
                kind: format!("key exchange {:?}, not X25519", group.name()),
            });
        }
    }
    if !request.is_empty() {
        conn.writer()
            .write_all(request)
            .map_err(|e| io_kind("request", &e))?;
        while conn.wants_write() {
            conn.write_tls(&mut sock)
                .map_err(|e| io_kind("request", &e))?;
        }
    }
    let mut got = 0;
    while got < o.response {
        match conn.reader().read(buf) {
            Ok(0) => return Err(closed_early()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                read_records(&mut conn, &mut sock, "response")?
            }
            Err(e) => return Err(io_kind("response", &e)),
        }
    }
    if o.response == 0 && o.mode == Mode::Resume13 {
        // TLS 1.3 tickets come after the handshake: read them (one read).
        read_records(&mut conn, &mut sock, "tickets")?;
    }
    let total = t0.elapsed();
    conn.send_close_notify();
    while conn.wants_write() {
        if conn.write_tls(&mut sock).is_err() {
            break;
        }
    }
    let _ = sock.shutdown(Shutdown::Write);
    Ok(Done {
        kind,
        handshake,
        total,
    })
}

/// The plain-TCP connection of mode `plain`, after the connect: request,
/// response, close; the "handshake" is the connect.
fn plain_exchange(
    o: &Opts,
    mut sock: TcpStream,
    t0: Instant,
    request: &[u8],
    buf: &mut [u8],
) -> Result<Done, Failure> {
    let handshake = t0.elapsed();
    sock.write_all(request)
        .map_err(|e| io_kind("request", &e))?;
    let mut got = 0;
    while got < o.response {
        match sock.read(buf) {
            Ok(0) => return Err(closed_early()),
            Ok(n) => got += n,
            Err(e) => return Err(io_kind("response", &e)),
        }
    }
    let total = t0.elapsed();
    let _ = sock.shutdown(Shutdown::Write);
    Ok(Done {
        kind: None,
        handshake,
        total,
    })
}

/// One read from the socket, and the records it brought processed.
fn read_records(
    conn: &mut ClientConnection,
    sock: &mut TcpStream,
    stage: &str,
) -> Result<(), Failure> {
    match conn.read_tls(sock) {
        Ok(0) => {
            return Err(Failure {
                kind: format!("{stage}: eof"),
            })
        }
        Ok(_) => {}
        Err(e) => return Err(io_kind(stage, &e)),
    }
    match conn.process_new_packets() {
        Ok(_) => Ok(()),
        Err(e) => Err(Failure {
            kind: format!("{stage}: tls {e:?}"),
        }),
    }
}

// ---------------------------------------------------------------- the run

struct LoopResult {
    handshake: Histogram<u64>,
    total: Histogram<u64>,
    /// --rate: from the intended start to the end of the handshake.
    scheduled: Histogram<u64>,
    /// --rate: connections that started more than 1 ms after their slot
    /// (every loop was busy): many of them mean too few loops.
    late: u64,
    ok: u64,
    checked: u64,
    resumed: u64,
    full_when_expected_resumed: u64,
    errors: BTreeMap<String, u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// What the loops of one run share.
struct Shared {
    stop: AtomicBool,
    /// --count: connections started so far.
    started: AtomicU64,
    /// --rate: the next slot (connection i starts at t0 + i/rate).
    next_slot: AtomicU64,
    t0: Instant,
}

fn run_loop(o: &Opts, base: &ClientConfig, shared: &Shared) -> LoopResult {
    let (stop, started) = (&shared.stop, &shared.started);
    let config = loop_config(base, o.mode);
    let name = ServerName::try_from(o.server_name.clone())
        .unwrap_or_else(|e| die(format!("--server-name: {e}")));
    let request = vec![b'q'; o.request];
    let mut buf = vec![0u8; 64 * 1024];
    let mut r = LoopResult {
        handshake: histogram(),
        total: histogram(),
        scheduled: histogram(),
        late: 0,
        ok: 0,
        checked: 0,
        resumed: 0,
        full_when_expected_resumed: 0,
        errors: BTreeMap::new(),
    };
    let mut had_session = false;
    while !stop.load(Ordering::Relaxed) {
        if let Some(count) = o.count {
            if started.fetch_add(1, Ordering::Relaxed) >= count {
                break;
            }
        }
        let mut intended = None;
        if let Some(rate) = o.rate {
            let slot = shared.next_slot.fetch_add(1, Ordering::Relaxed);
            let offset = Duration::from_secs_f64(slot as f64 / rate);
            if o.count.is_none() && offset >= o.duration {
                break;
            }
            let at = shared.t0 + offset;
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            intended = Some(at);
        }
        let start = Instant::now();
        match one_connection(o, &config, &name, &request, &mut buf) {
            Ok(done) => {
                r.ok += 1;
                if let Some(at) = intended {
                    let late = start.saturating_duration_since(at);
                    if late > Duration::from_millis(1) {
                        r.late += 1;
                    }
                    let _ = r
                        .scheduled
                        .record((late + done.handshake).as_micros().max(1) as u64);
                }
                let _ = r.handshake.record(done.handshake.as_micros().max(1) as u64);
                let _ = r.total.record(done.total.as_micros().max(1) as u64);
                let resumed = done.kind == Some(HandshakeKind::Resumed);
                if o.mode.resumes() {
                    if had_session {
                        r.checked += 1;
                        if resumed {
                            r.resumed += 1;
                        } else {
                            r.full_when_expected_resumed += 1;
                        }
                    }
                    had_session = true;
                } else if resumed {
                    *r.errors.entry("unexpected resumption".into()).or_default() += 1;
                }
            }
            Err(f) => {
                *r.errors.entry(f.kind).or_default() += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    r
}

fn total_cpu(pids: &[u32]) -> Option<f64> {
    procfs::total_cpu_seconds(pids).ok()
}

fn run(o: Opts) {
    let base = base_config(&o);
    let o = Arc::new(o);
    let base = Arc::new(base);
    let loops = o.threads * o.concurrency;

    let cpu_before = if o.server_pids.is_empty() {
        None
    } else {
        Some(
            total_cpu(&o.server_pids)
                .unwrap_or_else(|| die("cannot read /proc/PID/stat of a --server-pid")),
        )
    };
    let t0 = Instant::now();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        started: AtomicU64::new(0),
        next_slot: AtomicU64::new(0),
        t0,
    });
    let handles: Vec<_> = (0..loops)
        .map(|i| {
            let (o, base, shared) = (o.clone(), base.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("loop-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || run_loop(&o, &base, &shared))
                .unwrap_or_else(|e| die(format!("cannot start loop thread {i}: {e}")))
        })
        .collect();
    if o.count.is_none() {
        std::thread::sleep(o.duration);
        shared.stop.store(true, Ordering::Relaxed);
    }
    let mut hs = histogram();
    let mut total = histogram();
    let mut scheduled = histogram();
    let mut late = 0u64;
    let (mut ok, mut checked, mut resumed, mut fell_back) = (0u64, 0u64, 0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for h in handles {
        let r = h.join().expect("loop thread panicked");
        hs.add(&r.handshake).expect("histogram add");
        total.add(&r.total).expect("histogram add");
        scheduled.add(&r.scheduled).expect("histogram add");
        late += r.late;
        ok += r.ok;
        checked += r.checked;
        resumed += r.resumed;
        fell_back += r.full_when_expected_resumed;
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu_after = cpu_before.map(|_| total_cpu(&o.server_pids));
    let server_cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(Some(a))) => Some(a - b),
        (Some(_), _) => {
            eprintln!("tlsload: warning: a --server-pid went away during the run; no CPU figure");
            None
        }
        _ => None,
    };
    let rate = ok as f64 / elapsed;
    let per_cpu = server_cpu.filter(|c| *c > 0.0).map(|c| ok as f64 / c);
    let fraction = if checked > 0 {
        Some(resumed as f64 / checked as f64)
    } else {
        None
    };
    let error_total: u64 = errors.values().sum();
    let pct = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    let lat = |h: &Histogram<u64>| {
        serde_json::json!({
            "p50": pct(h, 0.50), "p90": pct(h, 0.90), "p99": pct(h, 0.99), "p999": pct(h, 0.999),
            "max": h.max(), "mean": if h.is_empty() { 0.0 } else { h.mean() },
        })
    };

    if !o.quiet {
        println!(
            "tlsload {} -> {} ({} loops = {} threads x {}, {:.2} s{})",
            o.mode.name(),
            o.connect,
            loops,
            o.threads,
            o.concurrency,
            elapsed,
            if o.request + o.response > 0 {
                format!(", {} B request, {} B response", o.request, o.response)
            } else {
                String::new()
            }
        );
        println!("  connections ok  {ok}   ({rate:.0} handshakes/s)");
        println!(
            "  handshake us    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            pct(&hs, 0.5),
            pct(&hs, 0.9),
            pct(&hs, 0.99),
            pct(&hs, 0.999),
            hs.max()
        );
        if o.request + o.response > 0 {
            println!(
                "  connection us   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                pct(&total, 0.5),
                pct(&total, 0.9),
                pct(&total, 0.99),
                pct(&total, 0.999),
                total.max()
            );
        }
        if let Some(rate) = o.rate {
            println!(
                "  offered         {rate:.0}/s; from intended start us p50 {}  p99 {}  p99.9 {}; late starts {late}",
                pct(&scheduled, 0.5),
                pct(&scheduled, 0.99),
                pct(&scheduled, 0.999),
            );
        }
        if o.mode.resumes() {
            match fraction {
                Some(f) => println!(
                    "  resumed         {resumed}/{checked} = {:.2} % (full handshakes where a resumption was expected: {fell_back})",
                    f * 100.0
                ),
                None => println!("  resumed         nothing checked (no second handshake in any loop)"),
            }
        }
        if let Some(cpu) = server_cpu {
            println!(
                "  server CPU      {cpu:.2} s ({:.0} % of one core), {} handshakes per server CPU-second",
                cpu / elapsed * 100.0,
                per_cpu.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
            );
        }
        if errors.is_empty() {
            println!("  errors          none");
        } else {
            println!("  errors          {error_total}");
            for (k, v) in &errors {
                println!("    {v:>8}  {k}");
            }
        }
    }

    if let Some(path) = &o.json {
        let doc = serde_json::json!({
            "label": o.label,
            "mode": o.mode.name(),
            "connect": o.connect.to_string(),
            "threads": o.threads,
            "concurrency": o.concurrency,
            "request_bytes": o.request,
            "response_bytes": o.response,
            "elapsed_s": elapsed,
            "connections_ok": ok,
            "handshakes_per_s": rate,
            "handshake_latency_us": lat(&hs),
            "connection_latency_us": lat(&total),
            "offered_rate": o.rate,
            "scheduled_latency_us": o.rate.map(|_| lat(&scheduled)),
            "late_starts": o.rate.map(|_| late),
            "resumption_checked": checked,
            "resumed": resumed,
            "resumed_fraction": fraction,
            "errors_total": error_total,
            "errors": errors,
            "server_pids": o.server_pids,
            "server_cpu_s": server_cpu,
            "server_cpu_util": server_cpu.map(|c| c / elapsed),
            "handshakes_per_server_cpu_s": per_cpu,
        });
        let text = serde_json::to_string_pretty(&doc).expect("json") + "\n";
        std::fs::write(path, text).unwrap_or_else(|e| die(format!("{path}: {e}")));
    }
}

// ---------------------------------------------------------------- helpers

/// The next argument as the value of `flag`.
fn arg<T>(it: &mut impl Iterator<Item = String>, flag: &str) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let v = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
    v.parse()
        .map_err(|e| anyhow!("{flag}: bad value {v:?}: {e}"))
}

fn resolve_addr(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr:?}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr:?} resolves to no address"))
}

/// Writes the `--json` report, if one was asked for: `fields` and the
/// label, the kind of run and the address connected to.
fn write_report(
    json: &Option<String>,
    label: &str,
    kind: &str,
    connect: SocketAddr,
    mut fields: serde_json::Value,
) -> Result<()> {
    let Some(path) = json else {
        return Ok(());
    };
    fields["label"] = label.into();
    fields["kind"] = kind.into();
    fields["connect"] = connect.to_string().into();
    write_json(path, &fields)
}

fn write_json(path: &str, doc: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(doc).context("encoding the JSON report")? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {path}"))
}

/// A client config that checks no certificate (a benchmark client: the
/// server's work is the same) and never resumes.
fn insecure_config(tls13: bool) -> Result<Arc<ClientConfig>> {
    let mut config = accept_anything_config(tls13).context("client config")?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The socket as rustls sees it: reads go through a large buffer, because
/// rustls asks for a few KiB per `read_tls` and a 64 MiB download would
/// otherwise cost the client thousands of small reads; writes go straight
/// to the socket (rustls already writes whole vectors of records).
struct BufferedSocket<'a> {
    reader: BufReader<&'a TcpStream>,
    writer: &'a TcpStream,
}

impl<'a> BufferedSocket<'a> {
    fn new(sock: &'a TcpStream, capacity: usize) -> Self {
        BufferedSocket {
            reader: BufReader::with_capacity(capacity, sock),
            writer: sock,
        }
    }
}

impl Read for BufferedSocket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for BufferedSocket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.writer.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

fn connect_socket(addr: &SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let sock =
        TcpStream::connect_timeout(addr, timeout).with_context(|| format!("connect {addr}"))?;
    sock.set_nodelay(true).context("setting TCP_NODELAY")?;
    sock.set_read_timeout(Some(timeout))
        .context("setting the read timeout")?;
    sock.set_write_timeout(Some(timeout))
        .context("setting the write timeout")?;
    Ok(sock)
}

fn handshake<S: Read + Write>(conn: &mut ClientConnection, io: &mut S) -> Result<()> {
    while conn.is_handshaking() {
        if conn.complete_io(io).context("handshake")? == (0, 0) {
            bail!("handshake: the server closed the connection");
        }
    }
    Ok(())
}

/// Writes everything rustls has queued for the server.
fn flush_tls<S: Write>(conn: &mut ClientConnection, io: &mut S) -> Result<()> {
    while conn.wants_write() {
        conn.write_tls(io).context("writing TLS records")?;
    }
    Ok(())
}

/// Reads and processes what the socket has (at least one byte); EOF is an
/// error, since every caller still expects bytes.
fn fill_tls<S: Read>(conn: &mut ClientConnection, io: &mut S, what: &str) -> Result<()> {
    let n = conn
        .read_tls(io)
        .with_context(|| format!("{what}: reading"))?;
    if n == 0 {
        bail!("{what}: the connection closed");
    }
    conn.process_new_packets()
        .map_err(|e| anyhow!("{what}: TLS error {e:?}"))?;
    Ok(())
}

/// Reads `want` bytes of plaintext and throws them away.
fn read_plaintext<S: Read>(
    conn: &mut ClientConnection,
    io: &mut S,
    want: u64,
    buf: &mut [u8],
    what: &str,
) -> Result<()> {
    let mut got = 0u64;
    while got < want {
        match conn.reader().read(buf) {
            Ok(0) => bail!("{what}: closed after {got} of {want} bytes"),
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => fill_tls(conn, io, what)?,
            Err(e) => {
                return Err(e).with_context(|| format!("{what}: after {got} of {want} bytes"))
            }
        }
    }
    Ok(())
}

/// close_notify and FIN, best effort: the measurement is over.
fn close_tls<S: Write>(conn: &mut ClientConnection, io: &mut S, sock: &TcpStream) {
    conn.send_close_notify();
    let _ = flush_tls(conn, io);
    let _ = sock.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------- bulk

/// How a bulk transfer starts: these 8 bytes, `D` (the upstream sends) or
/// `U` (the client sends), and the length as a big-endian u64.
const BULK_MAGIC: &[u8; 8] = b"TLSBULK1";
const BULK_HEADER_LEN: usize = 17;
/// Bytes per write of a bulk sender, and per read of the upstream's
/// bulk receiver.
const BULK_CHUNK: usize = 256 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    Down,
    Up,
}

impl Direction {
    fn parse(s: &str) -> Result<Direction> {
        match s {
            "down" => Ok(Direction::Down),
            "up" => Ok(Direction::Up),
            _ => bail!("--direction: {s:?} is neither down nor up"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Direction::Down => "down",
            Direction::Up => "up",
        }
    }
}

fn bulk_header(dir: Direction, bytes: u64) -> [u8; BULK_HEADER_LEN] {
    let mut h = [0u8; BULK_HEADER_LEN];
    h[..8].copy_from_slice(BULK_MAGIC);
    h[8] = match dir {
        Direction::Down => b'D',
        Direction::Up => b'U',
    };
    h[9..].copy_from_slice(&bytes.to_be_bytes());
    h
}

/// One bulk transfer on a new TLS connection; returns the time from the
/// header sent to the last byte received (down) or acknowledged (up).
fn bulk_transfer(
    addr: &SocketAddr,
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    dir: Direction,
    bytes: u64,
    timeout: Duration,
) -> Result<Duration> {
    let sock = connect_socket(addr, timeout)?;
    let mut io = BufferedSocket::new(&sock, 1 << 20);
    let mut conn =
        ClientConnection::new(config.clone(), name.clone()).context("client connection")?;
    handshake(&mut conn, &mut io)?;
    conn.writer()
        .write_all(&bulk_header(dir, bytes))
        .context("queueing the bulk header")?;
    flush_tls(&mut conn, &mut io)?;
    let t = Instant::now();
    let mut buf = vec![0u8; BULK_CHUNK];
    match dir {
        Direction::Down => read_plaintext(&mut conn, &mut io, bytes, &mut buf, "download")?,
        Direction::Up => {
            let chunk = vec![b'u'; BULK_CHUNK];
            let mut sent = 0u64;
            while sent < bytes {
                let want = (bytes - sent).min(BULK_CHUNK as u64) as usize;
                let n = conn.writer().write(&chunk[..want]).context("upload")?;
                if n == 0 && !conn.wants_write() {
                    bail!("upload: rustls took no bytes and has nothing to send");
                }
                sent += n as u64;
                flush_tls(&mut conn, &mut io)?;
            }
            read_plaintext(&mut conn, &mut io, 1, &mut buf, "upload acknowledgement")?;
        }
    }
    let elapsed = t.elapsed();
    close_tls(&mut conn, &mut io, &sock);
    Ok(elapsed)
}

/// The options `bulk` and `idle` share: the server's name, the socket
/// timeout, and what is measured and reported.
struct Common {
    pids: Vec<u32>,
    json: Option<String>,
    label: String,
    server_name: String,
    timeout: Duration,
}

impl Common {
    fn new(timeout: Duration) -> Common {
        Common {
            pids: Vec::new(),
            json: None,
            label: String::new(),
            server_name: "localhost".to_string(),
            timeout,
        }
    }

    /// Takes option `a` (and its value from `args`) if it is one of these;
    /// false if it is not.
    fn take(&mut self, a: &str, args: &mut impl Iterator<Item = String>) -> Result<bool> {
        match a {
            "--server-pid" => self.pids.push(arg(args, a)?),
            "--json" => self.json = Some(arg(args, a)?),
            "--label" => self.label = arg(args, a)?,
            "--server-name" => self.server_name = arg(args, a)?,
            "--timeout" => self.timeout = Duration::from_secs_f64(arg(args, a)?),
            // These clients never verify (see the usage); accepted so that
            // they take the same options as the handshake modes.
            "--insecure" => {}
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `--server-name` as the name a client sends and checks.
    fn name(&self) -> Result<ServerName<'static>> {
        ServerName::try_from(self.server_name.clone())
            .with_context(|| format!("--server-name {:?}", self.server_name))
    }
}

fn bulk(mut args: impl Iterator<Item = String>) -> Result<()> {
    let mut connect = None;
    let mut bytes: Option<u64> = None;
    let mut directions = vec![Direction::Down, Direction::Up];
    let mut count = 1u32;
    let mut tls13 = true;
    let mut common = Common::new(Duration::from_secs(60));
    while let Some(a) = args.next() {
        match a.as_str() {
            "--connect" => connect = Some(resolve_addr(&arg::<String>(&mut args, &a)?)?),
            "--bytes" => bytes = Some(arg(&mut args, &a)?),
            "--direction" => {
                directions = arg::<String>(&mut args, &a)?
                    .split(',')
                    .map(Direction::parse)
                    .collect::<Result<_>>()?
            }
            "--count" => count = arg(&mut args, &a)?,
            "--tls" => {
                tls13 = match arg::<String>(&mut args, &a)?.as_str() {
                    "1.3" => true,
                    "1.2" => false,
                    v => bail!("--tls: {v:?} is neither 1.2 nor 1.3"),
                }
            }
            _ if common.take(&a, &mut args)? => {}
            _ => bail!("unknown option {a:?}\n{USAGE}"),
        }
    }
    let connect = connect.ok_or_else(|| anyhow!("--connect ADDR is required"))?;
    let bytes = bytes.ok_or_else(|| anyhow!("--bytes N is required"))?;
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let config = insecure_config(tls13)?;
    let name = common.name()?;
    let mut reports = Vec::new();
    for dir in directions {
        let cpu_before = if common.pids.is_empty() {
            None
        } else {
            Some(procfs::total_cpu_seconds(&common.pids).context("server CPU before")?)
        };
        let wall = Instant::now();
        let mut transfer_s = 0.0;
        for i in 0..count {
            transfer_s += bulk_transfer(&connect, &config, &name, dir, bytes, common.timeout)
                .with_context(|| format!("{} transfer {} of {count}", dir.name(), i + 1))?
                .as_secs_f64();
        }
        let wall_s = wall.elapsed().as_secs_f64();
        let server_cpu = match cpu_before {
            Some(before) => {
                Some(procfs::total_cpu_seconds(&common.pids).context("server CPU after")? - before)
            }
            None => None,
        };
        let mb = bytes as f64 * count as f64 / 1e6;
        let per_cpu = server_cpu.filter(|c| *c > 0.0).map(|c| mb / c);
        println!(
            "tlsload bulk {} -> {connect}: {count} x {bytes} B in {transfer_s:.3} s = {:.0} MB/s{}",
            dir.name(),
            mb / transfer_s,
            match (server_cpu, per_cpu) {
                (Some(c), Some(p)) =>
                    format!("; server CPU {c:.2} s = {p:.0} MB per server CPU-second"),
                _ => String::new(),
            }
        );
        reports.push(serde_json::json!({
            "direction": dir.name(),
            "transfers": count,
            "bytes_each": bytes,
            "transfer_s": transfer_s,
            "wall_s": wall_s,
            "mb_per_s": mb / transfer_s,
            "server_cpu_s": server_cpu,
            "server_cpu_util": server_cpu.map(|c| c / wall_s),
            "mb_per_server_cpu_s": per_cpu,
        }));
    }
    write_report(
        &common.json,
        &common.label,
        "bulk",
        connect,
        serde_json::json!({
            "tls": if tls13 { "1.3" } else { "1.2" },
            "server_pids": common.pids,
            "directions": reports,
        }),
    )?;
    Ok(())
}

// ---------------------------------------------------------------- idle

/// One TLS 1.3 connection with one request/response, kept open: only the
/// socket is kept (the client's TLS state is dropped, the server's is not).
fn open_idle(
    addr: &SocketAddr,
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    request: &[u8],
    response: u64,
    timeout: Duration,
    buf: &mut [u8],
) -> Result<TcpStream> {
    let sock = connect_socket(addr, timeout)?;
    let mut io = &sock;
    let mut conn =
        ClientConnection::new(config.clone(), name.clone()).context("client connection")?;
    handshake(&mut conn, &mut io)?;
    if !request.is_empty() {
        conn.writer()
            .write_all(request)
            .context("queueing the request")?;
        flush_tls(&mut conn, &mut io)?;
    }
    read_plaintext(&mut conn, &mut io, response, buf, "response")?;
    Ok(sock)
}

/// Whether the server closed `s`: drains what is readable without
/// blocking; EOF or an error means closed.
fn closed_by_peer(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    drained_to_eof(s, &mut [0u8; 4096])
}

fn rates(w: procfs::Wakeups, secs: f64) -> serde_json::Value {
    serde_json::json!({
        "voluntary": w.voluntary as f64 / secs,
        "nonvoluntary": w.nonvoluntary as f64 / secs,
        "timeslices": w.timeslices as f64 / secs,
    })
}

fn idle(mut args: impl Iterator<Item = String>) -> Result<()> {
    let mut connect = None;
    let mut connections = 10_000usize;
    let mut hold = 5.0f64;
    let mut settle = 1.0f64;
    let mut threads = 4usize;
    let mut request = 0usize;
    let mut response = 0u64;
    let mut common = Common::new(Duration::from_secs(10));
    while let Some(a) = args.next() {
        match a.as_str() {
            "--connect" => connect = Some(resolve_addr(&arg::<String>(&mut args, &a)?)?),
            "--connections" => connections = arg(&mut args, &a)?,
            "--hold" => hold = arg(&mut args, &a)?,
            "--settle" => settle = arg(&mut args, &a)?,
            "--threads" => threads = arg(&mut args, &a)?,
            "--request" => request = arg(&mut args, &a)?,
            "--response" => response = arg(&mut args, &a)?,
            _ if common.take(&a, &mut args)? => {}
            _ => bail!("unknown option {a:?}\n{USAGE}"),
        }
    }
    let connect = connect.ok_or_else(|| anyhow!("--connect ADDR is required"))?;
    if common.pids.is_empty() {
        bail!("give the server's processes with --server-pid (what is measured)");
    }
    if threads == 0 || connections == 0 || hold <= 0.0 {
        bail!("--threads, --connections and --hold must be positive");
    }
    let config = insecure_config(true)?;
    let name = common.name()?;

    // The wake-up rate with no connection, for comparison: timers a server
    // runs anyway.
    let w0 = procfs::wakeups(&common.pids)?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(hold));
    let base_wakeups = rates(
        procfs::wakeups(&common.pids)?.since(w0),
        t.elapsed().as_secs_f64(),
    );
    let rss_before = procfs::total_rss_anon_bytes(&common.pids)?;

    let t_open = Instant::now();
    let request = Arc::new(vec![b'q'; request]);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let n = connections / threads + usize::from(i < connections % threads);
            let (config, name, request) = (config.clone(), name.clone(), request.clone());
            std::thread::Builder::new()
                .name(format!("idle-{i}"))
                .spawn(move || {
                    let mut kept = Vec::with_capacity(n);
                    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                    let mut in_a_row = 0;
                    let mut buf = vec![0u8; 16 * 1024];
                    while kept.len() < n {
                        match open_idle(
                            &connect,
                            &config,
                            &name,
                            &request,
                            response,
                            common.timeout,
                            &mut buf,
                        ) {
                            Ok(s) => {
                                kept.push(s);
                                in_a_row = 0;
                            }
                            Err(e) => {
                                *errors.entry(format!("{e:#}")).or_default() += 1;
                                in_a_row += 1;
                                // A limit was hit (files, ports, the
                                // server's): more attempts would only spin.
                                if in_a_row >= 50 {
                                    break;
                                }
                            }
                        }
                    }
                    (kept, errors)
                })
                .context("starting an idle-connection thread")
        })
        .collect::<Result<_>>()?;
    let mut conns: Vec<TcpStream> = Vec::with_capacity(connections);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for h in handles {
        let (kept, errs) = h
            .join()
            .map_err(|_| anyhow!("an idle-connection thread panicked"))?;
        conns.extend(kept);
        for (k, v) in errs {
            *errors.entry(k).or_default() += v;
        }
    }
    let open_s = t_open.elapsed().as_secs_f64();
    let opened = conns.len();
    if opened == 0 {
        bail!("no connection opened: {errors:?}");
    }

    std::thread::sleep(Duration::from_secs_f64(settle));
    let rss_after = procfs::total_rss_anon_bytes(&common.pids)?;
    let w1 = procfs::wakeups(&common.pids)?;
    let cpu1 = procfs::total_cpu_seconds(&common.pids)?;
    let t = Instant::now();
    // Sampled every half second, not only at both ends: a burst (the tail
    // of the opening, a periodic sweep) and a steady rate look alike in a
    // single average, and the series tells them apart.
    let mut series = Vec::new();
    let mut last = w1;
    let mut half = None;
    let end = t + Duration::from_secs_f64(hold);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(500)));
        let w = procfs::wakeups(&common.pids)?;
        series.push(w.since(last).voluntary);
        last = w;
        if half.is_none() && t.elapsed().as_secs_f64() >= hold / 2.0 {
            half = Some((w, t.elapsed().as_secs_f64()));
        }
    }
    let held_s = t.elapsed().as_secs_f64();
    let idle_wakeups = last.since(w1);
    let second_half = half.map(|(w, at)| rates(last.since(w), held_s - at));
    let idle_cpu = procfs::total_cpu_seconds(&common.pids)? - cpu1;
    let rss_end = procfs::total_rss_anon_bytes(&common.pids)?;
    let closed = conns.iter().filter(|s| closed_by_peer(s)).count();
    let per_conn = (rss_after as f64 - rss_before as f64) / opened as f64;
    let idle_rates = rates(idle_wakeups, held_s);
    println!(
        "tlsload idle -> {connect}: {opened}/{connections} open in {open_s:.1} s, RssAnon +{:.0} KiB = {per_conn:.0} B per connection; \
         while idle {:.1} voluntary wake-ups/s (without connections {:.1}), server CPU {idle_cpu:.2} s in {held_s:.1} s; closed by the server {closed}",
        (rss_after as f64 - rss_before as f64) / 1024.0,
        idle_wakeups.voluntary as f64 / held_s,
        base_wakeups["voluntary"].as_f64().unwrap_or(0.0),
    );
    if !errors.is_empty() {
        for (k, v) in &errors {
            println!("    {v:>8}  {k}");
        }
    }
    write_report(
        &common.json,
        &common.label,
        "idle",
        connect,
        serde_json::json!({
            "server_pids": common.pids,
            "connections_asked": connections,
            "connections_open": opened,
            "open_errors": errors,
            "open_s": open_s,
            "rss_anon_before_bytes": rss_before,
            "rss_anon_after_bytes": rss_after,
            "rss_anon_end_bytes": rss_end,
            "rss_anon_per_connection_bytes": per_conn,
            "hold_s": held_s,
            "wakeups_per_s_without_connections": base_wakeups,
            "wakeups_per_s_idle": idle_rates,
            "wakeups_per_s_idle_second_half": second_half,
            "voluntary_wakeups_per_half_second": series,
            "server_cpu_idle_s": idle_cpu,
            "closed_by_server": closed,
        }),
    )?;
    drop(conns);
    Ok(())
}

// ---------------------------------------------------------------- upstream

/// What a served connection still needs.
enum Served {
    /// The response is written: wait for the client's EOF, then close.
    AwaitEof,
    /// The client closed first.
    Closed,
}

fn upstream(mut args: impl Iterator<Item = String>) -> Result<()> {
    let mut listen: Option<String> = None;
    let mut request = 0usize;
    let mut response = 0usize;
    let mut threads = 128usize;
    let mut bulk = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = Some(arg(&mut args, &a)?),
            "--request" => request = arg(&mut args, &a)?,
            "--response" => response = arg(&mut args, &a)?,
            "--threads" => threads = arg(&mut args, &a)?,
            "--bulk" => bulk = true,
            _ => bail!("unknown option {a:?}\n{USAGE}"),
        }
    }
    let listen = listen.ok_or_else(|| anyhow!("--listen ADDR is required"))?;
    // The first bytes of every connection decide whether it is a bulk
    // transfer, so an ordinary request must be at least that long (or
    // absent, when --bulk is off).
    if bulk && request < BULK_HEADER_LEN {
        bail!("--bulk needs --request of at least {BULK_HEADER_LEN} bytes (the bulk header)");
    }
    let threads = threads.max(1);
    let listener =
        TcpListener::bind(resolve_addr(&listen)?).with_context(|| format!("bind {listen}"))?;
    let local = listener.local_addr().context("the listener's address")?;
    eprintln!(
        "tlsload upstream: listening on {local} (read {request} B, write {response} B, wait for EOF; \
         {threads} threads{})",
        if bulk { "; bulk transfers too" } else { "" }
    );
    let parker = Arc::new(Parker::start()?);
    // Threads blocked waiting for a client's EOF. Beyond half of the pool,
    // connections go to the parker instead, so that thousands of idle
    // connections keep no thousand threads and the pool stays free to
    // accept; below it a connection costs no hand-over.
    let waiting = Arc::new(AtomicUsize::new(0));
    let park_above = (threads / 2).max(1);
    let reply = Arc::new(vec![b'r'; response]);
    let bulk_data = Arc::new(if bulk {
        vec![b'd'; BULK_CHUNK]
    } else {
        Vec::new()
    });
    let handles = (0..threads)
        .map(|i| {
            let listener = listener
                .try_clone()
                .context("duplicating the listening socket")?;
            let (reply, bulk_data) = (reply.clone(), bulk_data.clone());
            let (parker, waiting) = (parker.clone(), waiting.clone());
            std::thread::Builder::new()
                .name(format!("upstream-{i}"))
                .stack_size(128 * 1024)
                .spawn(move || {
                    let mut buf = vec![0u8; if bulk { BULK_CHUNK } else { 16 * 1024 }];
                    loop {
                        let mut s = match listener.accept() {
                            Ok((s, _)) => s,
                            Err(_) => {
                                // Out of descriptors or the like: let
                                // closes catch up instead of spinning.
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        };
                        let _ = s.set_nodelay(true);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                        match serve(&mut s, request, &reply, &bulk_data, &mut buf) {
                            Ok(Served::AwaitEof) => {
                                if waiting.load(Ordering::Relaxed) >= park_above {
                                    parker.park(s);
                                } else {
                                    waiting.fetch_add(1, Ordering::Relaxed);
                                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                                    waiting.fetch_sub(1, Ordering::Relaxed);
                                }
                            }
                            Ok(Served::Closed) | Err(_) => {}
                        }
                    }
                })
                .context("starting an upstream thread")
        })
        .collect::<Result<Vec<_>>>()?;
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// Reads the request (or a bulk header), writes the response (or does the
/// bulk transfer).
fn serve(
    s: &mut TcpStream,
    request: usize,
    reply: &[u8],
    bulk_data: &[u8],
    buf: &mut [u8],
) -> io::Result<Served> {
    let mut got = 0;
    if !bulk_data.is_empty() {
        // The header decides; every request is at least this long (checked
        // at start), so reading this much never waits for bytes that an
        // ordinary client does not send.
        while got < BULK_HEADER_LEN {
            let n = s.read(&mut buf[got..])?;
            if n == 0 {
                return Ok(Served::Closed);
            }
            got += n;
        }
        if buf[..BULK_MAGIC.len()] == BULK_MAGIC[..] {
            let mut header = [0u8; BULK_HEADER_LEN];
            header.copy_from_slice(&buf[..BULK_HEADER_LEN]);
            return serve_bulk(s, &header, got - BULK_HEADER_LEN, bulk_data, buf);
        }
    }
    while got < request {
        let n = s.read(buf)?;
        if n == 0 {
            return Ok(Served::Closed);
        }
        got += n;
    }
    s.write_all(reply)?;
    Ok(Served::AwaitEof)
}

/// A bulk transfer after its header; `already` bytes of an upload came
/// with the header.
fn serve_bulk(
    s: &mut TcpStream,
    header: &[u8; BULK_HEADER_LEN],
    already: usize,
    data: &[u8],
    buf: &mut [u8],
) -> io::Result<Served> {
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&header[9..]);
    let len = u64::from_be_bytes(len_bytes);
    match header[8] {
        b'D' => {
            let mut left = len;
            while left > 0 {
                let n = left.min(data.len() as u64) as usize;
                s.write_all(&data[..n])?;
                left -= n as u64;
            }
        }
        b'U' => {
            let mut got = already as u64;
            while got < len {
                let n = s.read(buf)?;
                if n == 0 {
                    return Ok(Served::Closed);
                }
                got += n as u64;
            }
            s.write_all(b".")?;
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bulk header: direction byte {other:#04x}"),
            ))
        }
    }
    Ok(Served::AwaitEof)
}

/// Connections that have their response and only wait for the client's
/// EOF, watched by one epoll thread (mio) and closed when it comes.
struct Parker {
    tx: mpsc::Sender<TcpStream>,
    waker: mio::Waker,
}

/// The parker's own token; connection n is token n + 1.
const PARKER_WAKE: mio::Token = mio::Token(0);

impl Parker {
    fn start() -> Result<Parker> {
        let poll = mio::Poll::new().context("creating the parker's epoll")?;
        let waker =
            mio::Waker::new(poll.registry(), PARKER_WAKE).context("creating the parker's waker")?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("parker".into())
            .spawn(move || park_loop(poll, rx))
            .context("starting the parker thread")?;
        Ok(Parker { tx, waker })
    }

    fn park(&self, s: TcpStream) {
        // If the parker is gone, dropping the socket closes it: the client
        // sees the close it would have caused anyway.
        if self.tx.send(s).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

fn park_loop(mut poll: mio::Poll, rx: mpsc::Receiver<TcpStream>) {
    let mut events = mio::Events::with_capacity(1024);
    let mut conns: Vec<Option<mio::net::TcpStream>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("tlsload upstream: parker: epoll_wait: {e}; parked connections stay open");
            return;
        }
        for ev in events.iter() {
            if ev.token() == PARKER_WAKE {
                continue;
            }
            let i = ev.token().0 - 1;
            let closed = match conns.get_mut(i) {
                Some(Some(s)) => drained_to_eof(s, &mut buf),
                _ => false,
            };
            if closed {
                if let Some(mut s) = conns[i].take() {
                    let _ = poll.registry().deregister(&mut s);
                }
                free.push(i);
            }
        }
        while let Ok(s) = rx.try_recv() {
            if s.set_nonblocking(true).is_err() {
                continue;
            }
            let mut s = mio::net::TcpStream::from_std(s);
            let i = free.pop().unwrap_or_else(|| {
                conns.push(None);
                conns.len() - 1
            });
            // Registering a socket that is already readable (the EOF came
            // during the hand-over) reports it at once.
            match poll
                .registry()
                .register(&mut s, mio::Token(i + 1), mio::Interest::READABLE)
            {
                Ok(()) => conns[i] = Some(s),
                Err(_) => free.push(i),
            }
        }
    }
}

/// Reads a parked connection until it would block; true at EOF or error.
fn drained_to_eof(mut s: impl Read, buf: &mut [u8]) -> bool {
    loop {
        match s.read(buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}
