//! Running out of file descriptors: accept errors pause accepting instead of
//! spinning, open connections keep working, and accepting resumes once
//! descriptors are free again.

use std::net::TcpStream;
use std::time::Duration;

use tlsfront_tests::*;
use tlsfront_tests::{lifecycle::Proc, streaming::Streamer};

/// utime + stime of `pid`, in clock ticks (USER_HZ, 100 on Linux).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the parenthesised command name: state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list fds")
        .count()
}

/// The soft RLIMIT_NOFILE of `pid`.
fn soft_nofile(pid: i32) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    line.split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .expect("soft limit")
}

#[test]
fn out_of_descriptors_pauses_accepting_without_spinning_and_keeps_open_connections() {
    let pki = Pki::new();
    let dir = temp_dir();
    let (cert, key) = pki.leaf(&["localhost"]).write(dir.path(), "localhost");
    let echo = Upstream::echo();
    // The limit is set before start: io_uring takes a multishot accept's
    // descriptor limit when the accept is armed, as a process's limit is in
    // production (lowering it under a running process would not bite).
    const NOFILE: u64 = 64;
    let limit = format!("--nofile={NOFILE}:{NOFILE}");
    let p = Proc::start_wrapped(
        &["prlimit", &limit, "--"],
        None,
        &[
            ("worker.count", "1"),
            ("tls.cert", cert.to_str().expect("path")),
            ("tls.key", key.to_str().expect("path")),
            ("upstream.addr", &echo.addr_string()),
        ],
    );
    let pid = p.pid();
    assert_eq!(soft_nofile(pid), NOFILE as usize, "prlimit did not apply");
    let client = TlsClient::connect(p.addr(), ClientSpec::new(pki.trust()).build(), "localhost")
        .unwrap_or_else(|e| panic!("{e}\n{}", p.output()));
    let stream = Streamer::start(client, 5, 1024, Duration::from_millis(20));
    assert!(
        stream.wait_more_rounds(3, Duration::from_secs(5)),
        "stream did not start"
    );

    // More connections than descriptors left: each accepted one holds a
    // descriptor (it never sends a ClientHello), the rest wait in the
    // kernel's queue once accept fails.
    let spare = NOFILE as usize - open_fds(pid);
    let waiting: Vec<TcpStream> = (0..spare + 10)
        .map(|_| TcpStream::connect(p.addr()).expect("the kernel still queues connections"))
        .collect();
    let accept_failed = p.wait_stderr("accept failed", Duration::from_secs(5));
    assert!(accept_failed, "no accept error logged\n{}", p.output());
    assert!(
        open_fds(pid) <= NOFILE as usize,
        "more descriptors than the limit?"
    );

    // At the limit for 2 s: the worker must not spin on accept.
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(pid) - before;
    assert!(
        spent < 50,
        "{spent} ticks of CPU in 2 s at the descriptor limit: accept is spinning\n{}",
        p.output()
    );
    // The open connection kept streaming meanwhile.
    assert!(
        stream.wait_more_rounds(3, Duration::from_secs(5)),
        "the open connection stalled: {:?}\n{}",
        stream.error(),
        p.output()
    );

    // Descriptors back: the connections tlsfront accepted and that never
    // spoke go away (accept is first come, first served: they are the
    // first `spare`), and those the kernel queued meanwhile are served, as
    // their clients see it: a handshake and the echo of a request. So are
    // new ones.
    let mut waiting = waiting;
    let queued = waiting.split_off(spare.min(waiting.len()));
    drop(waiting);
    let cfg = ClientSpec::new(pki.trust()).build();
    for (i, sock) in queued.into_iter().enumerate() {
        let mut c = TlsClient::handshake_over(sock, cfg.clone(), "localhost").unwrap_or_else(|e| {
            panic!(
                "queued connection {i}: no handshake once descriptors came back: {e}\n{}",
                p.output()
            )
        });
        let (r, check) = c.echo_pattern(i as u64, 100, &PumpOpts::receive(100, IO_TIMEOUT));
        assert!(
            r.end == End::Count && check.first_mismatch.is_none(),
            "queued connection {i}: echo {r:?}, mismatch at {:?}\n{}",
            check.first_mismatch,
            p.output()
        );
    }
    let again = TlsClient::connect(p.addr(), cfg, "localhost");
    assert!(
        again.is_ok(),
        "no handshake for a new connection once descriptors came back: {:?}\n{}",
        again.err(),
        p.output()
    );
    let (_, err) = stream.stop();
    assert!(err.is_none(), "{err:?}");
}
