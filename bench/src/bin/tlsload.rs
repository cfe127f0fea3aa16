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
//! `tlsload upstream --listen ADDR --request N --response M` is the tiny
//! upstream for proxy benchmarks: per connection it reads N bytes, writes M
//! bytes, then waits for EOF.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustls::client::{ClientSessionMemoryCache, Resumption, Tls12Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind};
use tlsfront_bench::{pinned_provider, AcceptAnything};

const USAGE: &str = "\
usage:
  tlsload MODE --connect ADDR [options]
  tlsload upstream --listen ADDR [--request N] [--response M] [--threads T]

MODE: full12 | full13 | resume-id12 | resume-ticket12 | resume13
  full12           TLS 1.2, no resumption offered
  full13           TLS 1.3, no resumption offered
  resume-id12      TLS 1.2, resumes by session ID (the client offers no tickets)
  resume-ticket12  TLS 1.2, resumes by session ticket
  resume13         TLS 1.3, resumes with a PSK (ticket)

options:
  --connect ADDR         server address (host:port)
  --server-name NAME     SNI and name checked in the certificate (default localhost)
  --ca FILE              trust the PEM certificates in FILE
  --insecure             accept any certificate, verify no signature (cheapest client)
  --threads N            threads (default 1)
  --concurrency N        sequential-connection loops per thread (default 1); every loop
                         is one OS thread, so there are threads x concurrency of them
  --duration SECS        run this long (default 5)
  --count N              or stop after N connections in total
  --request BYTES        bytes written after the handshake (default 0)
  --response BYTES       bytes read after the request (default 0); with resume13 and
                         --response 0 one read waits for the server's tickets
  --timeout SECS         per-connection socket timeout (default 10)
  --server-pid PID       measure this process's CPU time (utime+stime, all threads);
                         repeatable: for nginx give the master and every worker
  --json FILE            write the results as JSON too
  --label TEXT           copied into the JSON (e.g. server name)
  --quiet                no human summary on stdout";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Full12,
    Full13,
    ResumeId12,
    ResumeTicket12,
    Resume13,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "full12" => Mode::Full12,
            "full13" => Mode::Full13,
            "resume-id12" => Mode::ResumeId12,
            "resume-ticket12" => Mode::ResumeTicket12,
            "resume13" => Mode::Resume13,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Full12 => "full12",
            Mode::Full13 => "full13",
            Mode::ResumeId12 => "resume-id12",
            Mode::ResumeTicket12 => "resume-ticket12",
            Mode::Resume13 => "resume13",
        }
    }
    fn resumes(self) -> bool {
        !matches!(self, Mode::Full12 | Mode::Full13)
    }
    fn tls13(self) -> bool {
        matches!(self, Mode::Full13 | Mode::Resume13)
    }
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
    if first == "upstream" {
        return upstream(args);
    }
    let mode =
        Mode::parse(&first).unwrap_or_else(|| die(format!("unknown mode {first:?}\n{USAGE}")));
    let mut o = Opts {
        mode,
        connect: "127.0.0.1:8443".parse().unwrap(),
        server_name: "localhost".into(),
        ca: None,
        insecure: false,
        threads: 1,
        concurrency: 1,
        duration: Duration::from_secs(5),
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
        Mode::Full12 | Mode::Full13 => Resumption::disabled(),
        Mode::ResumeId12 => Resumption::store(Arc::new(ClientSessionMemoryCache::new(4)))
            .tls12_resumption(Tls12Resumption::SessionIdOnly),
        Mode::ResumeTicket12 | Mode::Resume13 => {
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
            Ok(0) => {
                return Err(Failure {
                    kind: "response: closed early".into(),
                })
            }
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
    ok: u64,
    checked: u64,
    resumed: u64,
    full_when_expected_resumed: u64,
    errors: BTreeMap<String, u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

fn run_loop(o: &Opts, base: &ClientConfig, stop: &AtomicBool, started: &AtomicU64) -> LoopResult {
    let config = loop_config(base, o.mode);
    let name = ServerName::try_from(o.server_name.clone())
        .unwrap_or_else(|e| die(format!("--server-name: {e}")));
    let request = vec![b'q'; o.request];
    let mut buf = vec![0u8; 64 * 1024];
    let mut r = LoopResult {
        handshake: histogram(),
        total: histogram(),
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
        match one_connection(o, &config, &name, &request, &mut buf) {
            Ok(done) => {
                r.ok += 1;
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

/// utime + stime of a process (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // /proc reports USER_HZ ticks, 100 per second on Linux's user ABI.
    Some((utime + stime) as f64 / 100.0)
}

fn total_cpu(pids: &[u32]) -> Option<f64> {
    let mut sum = 0.0;
    for &pid in pids {
        sum += cpu_seconds(pid)?;
    }
    Some(sum)
}

fn run(o: Opts) {
    let base = base_config(&o);
    let o = Arc::new(o);
    let base = Arc::new(base);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));
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
    let handles: Vec<_> = (0..loops)
        .map(|i| {
            let (o, base, stop, started) = (o.clone(), base.clone(), stop.clone(), started.clone());
            std::thread::Builder::new()
                .name(format!("loop-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || run_loop(&o, &base, &stop, &started))
                .expect("spawn loop thread")
        })
        .collect();
    if o.count.is_none() {
        std::thread::sleep(o.duration);
        stop.store(true, Ordering::Relaxed);
    }
    let mut hs = histogram();
    let mut total = histogram();
    let (mut ok, mut checked, mut resumed, mut fell_back) = (0u64, 0u64, 0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for h in handles {
        let r = h.join().expect("loop thread panicked");
        hs.add(&r.handshake).expect("histogram add");
        total.add(&r.total).expect("histogram add");
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

// ---------------------------------------------------------------- upstream

fn upstream(mut args: impl Iterator<Item = String>) {
    let mut listen: Option<String> = None;
    let mut request = 0usize;
    let mut response = 0usize;
    let mut threads = 128usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = Some(value(&mut args, &a)),
            "--request" => request = value(&mut args, &a),
            "--response" => response = value(&mut args, &a),
            "--threads" => threads = value(&mut args, &a),
            _ => die(format!("upstream: unknown option {a:?}\n{USAGE}")),
        }
    }
    let listen = listen.unwrap_or_else(|| die("upstream: --listen ADDR is required"));
    let listener =
        TcpListener::bind(resolve(&listen)).unwrap_or_else(|e| die(format!("bind {listen}: {e}")));
    let served = Arc::new(AtomicU64::new(0));
    eprintln!(
        "tlsload upstream: listening on {} (read {request} B, write {response} B, wait for EOF; {threads} threads)",
        listener.local_addr().unwrap()
    );
    let reply = Arc::new(vec![b'r'; response]);
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let listener = listener.try_clone().expect("clone listener");
            let reply = reply.clone();
            let served = served.clone();
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let Ok((mut s, _)) = listener.accept() else {
                            continue;
                        };
                        let _ = s.set_nodelay(true);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                        let _ = serve(&mut s, request, &reply, &mut buf);
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .expect("spawn upstream thread")
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

fn serve(s: &mut TcpStream, request: usize, reply: &[u8], buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < request {
        let n = s.read(buf)?;
        if n == 0 {
            return Ok(());
        }
        got += n;
    }
    s.write_all(reply)?;
    // Wait for the other side to close (the frontend passes the client's close on).
    while s.read(buf)? > 0 {}
    Ok(())
}
