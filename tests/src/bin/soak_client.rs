//! Memory soak client (`bench/soak.sh`): runs handshake loops against a
//! running tlsfront for a while and samples the process's memory and
//! counters into a CSV.
//!
//! ```text
//! soak_client --addr IP:PORT --pid PID --socket CONTROL_SOCKET
//!             [--secs 600] [--interval 10] [--threads 2] [--csv FILE]
//! ```
//!
//! Each thread loops over connections (handshake, `GET /`, read to the
//! end): odd threads offer TLS 1.2 only, even ones TLS 1.2 and 1.3; every
//! other connection starts with an empty session store (a full handshake),
//! the others resume. Every `--interval` seconds one CSV line:
//! `elapsed_s,connections,failures,vmrss_kb,rss_anon_kb,rss_file_kb,rss_shmem_kb,accepted,handshakes,handshake_errors,active`
//! (the last four from `tlsfront stats`). At the end a summary on stderr;
//! the exit status is 1 if any connection failed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tlsfront_tests::process_status::proc_status_kb;
use tlsfront_tests::{
    resuming_client_config, tlsfront_cmd, visit, ClientSpec, Stats, Trust, Versions,
};

struct Args {
    addr: SocketAddr,
    pid: i32,
    socket: PathBuf,
    secs: u64,
    interval: u64,
    threads: usize,
    csv: Option<PathBuf>,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "soak_client: {msg}\nusage: soak_client --addr IP:PORT --pid PID --socket PATH \
         [--secs 600] [--interval 10] [--threads 2] [--csv FILE]"
    );
    std::process::exit(2)
}

fn parse<T: std::str::FromStr>(flag: &str, value: &str) -> T {
    value
        .parse()
        .unwrap_or_else(|_| usage(&format!("{flag}: bad value {value:?}")))
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let (mut addr, mut pid, mut socket) = (None, None, None);
    let (mut secs, mut interval, mut threads, mut csv): (u64, u64, usize, Option<PathBuf>) =
        (600, 10, 2, None);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--addr" => addr = Some(parse(&flag, &value)),
            "--pid" => pid = Some(parse(&flag, &value)),
            "--socket" => socket = Some(PathBuf::from(&value)),
            "--secs" => secs = parse(&flag, &value),
            "--interval" => interval = parse(&flag, &value),
            "--threads" => threads = parse(&flag, &value),
            "--csv" => csv = Some(PathBuf::from(&value)),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    Args {
        addr: addr.unwrap_or_else(|| usage("--addr is required")),
        pid: pid.unwrap_or_else(|| usage("--pid is required")),
        socket: socket.unwrap_or_else(|| usage("--socket is required")),
        secs,
        interval: interval.max(1),
        threads: threads.max(1),
        csv,
    }
}

fn stats(socket: &std::path::Path) -> Option<Stats> {
    let sock = socket.display().to_string();
    let out = tlsfront_cmd(&["stats", "--socket", &sock, "--json"]);
    if out.code() != Some(0) {
        return None;
    }
    Stats::parse(&out.stdout).ok()
}

fn main() {
    let args = parse_args();
    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let workers: Vec<_> = (0..args.threads)
        .map(|t| {
            let (stop, conns, fails, first) = (
                stop.clone(),
                connections.clone(),
                failures.clone(),
                first_error.clone(),
            );
            let addr = args.addr;
            thread::spawn(move || {
                let versions = if t % 2 == 1 {
                    Versions::Tls12
                } else {
                    Versions::Both
                };
                let spec = ClientSpec::new(Trust::AnyCert).versions(versions);
                let mut cfg = resuming_client_config(&spec);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if n.is_multiple_of(2) {
                        cfg = resuming_client_config(&spec);
                    }
                    n += 1;
                    let ok = match visit(addr, cfg.clone(), "localhost") {
                        Ok(v) if v.http_200 => true,
                        Ok(v) => {
                            first.lock().unwrap().get_or_insert(format!("{v:?}"));
                            false
                        }
                        Err(e) => {
                            first.lock().unwrap().get_or_insert(e.to_string());
                            false
                        }
                    };
                    conns.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        fails.fetch_add(1, Ordering::Relaxed);
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        })
        .collect();

    let mut csv: Box<dyn Write> = match &args.csv {
        Some(p) => Box::new(
            std::fs::File::create(p)
                .unwrap_or_else(|e| usage(&format!("--csv {}: {e}", p.display()))),
        ),
        None => Box::new(std::io::stdout()),
    };
    writeln!(
        csv,
        "elapsed_s,connections,failures,vmrss_kb,rss_anon_kb,rss_file_kb,rss_shmem_kb,accepted,handshakes,handshake_errors,active"
    )
    .unwrap();
    let start = Instant::now();
    let end = start + Duration::from_secs(args.secs);
    let mut samples: Vec<u64> = Vec::new();
    let mut next = start;
    loop {
        let now = Instant::now();
        if now < next {
            thread::sleep(next - now);
        }
        let m = proc_status_kb(args.pid);
        let kb = |k: &str| m.get(k).copied().unwrap_or(0);
        let s = stats(&args.socket).map(|s| s.total);
        let c = |f: fn(&tlsfront_tests::Counters) -> u64| {
            s.as_ref().map(f).map(|v| v.to_string()).unwrap_or_default()
        };
        writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{}",
            start.elapsed().as_secs(),
            connections.load(Ordering::Relaxed),
            failures.load(Ordering::Relaxed),
            kb("VmRSS"),
            kb("RssAnon"),
            kb("RssFile"),
            kb("RssShmem"),
            c(|t| t.accepted),
            c(|t| t.handshakes),
            c(|t| t.handshake_errors),
            c(|t| t.active),
        )
        .unwrap();
        csv.flush().unwrap();
        samples.push(kb("VmRSS"));
        if Instant::now() >= end {
            break;
        }
        next += Duration::from_secs(args.interval);
        if next > end {
            next = end;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.join();
    }
    let (n, f) = (
        connections.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    let first_rss = samples.first().copied().unwrap_or(0);
    let last_rss = samples.last().copied().unwrap_or(0);
    let max_rss = samples.iter().copied().max().unwrap_or(0);
    eprintln!(
        "soak_client: {n} connections in {:?} ({:.0}/s), {f} failed{}; VmRSS first {first_rss} kB, last {last_rss} kB, max {max_rss} kB",
        start.elapsed(),
        n as f64 / start.elapsed().as_secs_f64(),
        first_error
            .lock()
            .unwrap()
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    std::process::exit(if f == 0 { 0 } else { 1 });
}
