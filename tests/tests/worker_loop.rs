//! What the io_uring worker loop adds: a receive-buffer ring that runs dry
//! loses nothing, a connect that times out leaves no socket behind, idle
//! connections cost no wake-ups, and a log nobody reads stalls nobody.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tlsfront_tests::*;

/// Echoes `len` pattern bytes through tlsfront on one connection and checks
/// every byte that comes back.
fn echo_through(fe_addr: std::net::SocketAddr, seed: u64, len: u64) -> Result<(), String> {
    let mut client = TlsClient::connect(
        fe_addr,
        ClientSpec::new(Trust::AnyCert).build(),
        "localhost",
    )
    .map_err(|e| format!("handshake: {e}"))?;
    let (r, check) =
        client.echo_pattern(seed, len, &PumpOpts::receive(len, Duration::from_secs(60)));
    if r.end != End::Count || check.received != len || check.first_mismatch.is_some() {
        return Err(format!(
            "seed {seed}: {r:?}, received {} of {len}, first mismatch {:?}",
            check.received, check.first_mismatch
        ));
    }
    Ok(())
}

#[test]
fn a_receive_buffer_ring_of_one_buffer_makes_connections_wait_and_loses_no_byte() {
    let upstream = Upstream::echo();
    // One 1 KiB receive buffer for the whole worker: nearly every receive
    // finds the ring empty at least once and must wait for the next turn.
    let fe = Frontend::start(&[
        ("worker.count", "1"),
        ("worker.rx_buffers", "1"),
        ("worker.rx_buffer_size", "1k"),
        ("upstream.addr", &upstream.addr_string()),
    ]);
    let addr = fe.addr();
    let clients: Vec<_> = (0..8u64)
        .map(|i| thread::spawn(move || echo_through(addr, 0xb0f_0000 + i, 256 * 1024)))
        .collect();
    let failures: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().expect("client thread").err())
        .collect();
    assert!(failures.is_empty(), "{failures:?}\n{}", fe.output());
}

/// Sockets of process `pid` in `state` towards `port` (from `ss`, the
/// kernel's view).
fn sockets_in_state(pid: u32, state: &str, port: u16) -> usize {
    let out = Command::new("ss")
        .args(["-Htanp", "state", state, "dport", &format!(":{port}")])
        .output()
        .expect("ss (iproute2, installed by scripts/setup.sh) must run");
    assert!(out.status.success(), "ss failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .count()
}

#[test]
fn an_upstream_connect_that_times_out_leaves_no_socket_in_syn_sent() {
    // A listener that never accepts, with a backlog of 0: once its queue is
    // full, the kernel drops further SYNs and connects hang in SYN-SENT —
    // a blackholed upstream on loopback.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .expect("addr")
                .into(),
        )
        .expect("bind");
    socket.listen(0).expect("listen");
    let blackhole: TcpListener = socket.into();
    let port = blackhole.local_addr().expect("addr").port();
    // Fill the accept queue so that the next SYNs are dropped.
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(
            &blackhole.local_addr().expect("a"),
            Duration::from_millis(300),
        ) {
            fillers.push(s);
        }
    }
    let fe = Frontend::start(&[
        ("worker.count", "1"),
        ("upstream.addr", &format!("127.0.0.1:{port}")),
        ("upstream.connect_timeout", "1s"),
    ]);
    let pid = fe.pid();
    const N: usize = 40;
    let clients: Vec<_> = (0..N)
        .map(|_| {
            let addr = fe.addr();
            thread::spawn(move || {
                let mut c =
                    TlsClient::connect(addr, ClientSpec::new(Trust::AnyCert).build(), "localhost")
                        .map_err(|e| format!("handshake: {e}"))?;
                let (resp, end) = c.request(b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(10));
                Ok::<_, String>((resp.len(), end))
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let during = sockets_in_state(pid, "syn-sent", port);
    let outcomes: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    let after = sockets_in_state(pid, "syn-sent", port);
    eprintln!(
        "SYN-SENT towards the blackhole: {during} while connecting, {after} after the timeout"
    );
    assert!(
        during > 0,
        "the blackhole did not blackhole (0 sockets in SYN-SENT while connecting)"
    );
    assert_eq!(
        after, 0,
        "sockets left in SYN-SENT after upstream.connect_timeout"
    );
    for o in &outcomes {
        let (len, end) = o
            .as_ref()
            .expect("handshake succeeds before the upstream matters");
        assert_eq!((*len, end), (0, &End::CloseNotify), "{outcomes:?}");
    }
    let stats = fe.stats();
    assert_eq!(stats.total.upstream_errors, N as u64, "{stats:?}");
    drop(fillers);
}

fn voluntary_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks of tlsfront");
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("voluntary_ctxt_switches:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum()
}

#[test]
fn two_thousand_idle_connections_cost_no_wake_ups() {
    let upstream = Upstream::echo();
    let fe = Frontend::start(&[
        ("worker.count", "2"),
        ("upstream.addr", &upstream.addr_string()),
    ]);
    let mut open = Vec::new();
    for i in 0..2000 {
        let mut c = TlsClient::connect(
            fe.addr(),
            ClientSpec::new(Trust::AnyCert).build(),
            "localhost",
        )
        .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", fe.output()));
        c.conn.writer().write_all(b"hello").expect("write");
        while c.conn.wants_write() {
            c.conn.write_tls(&mut c.sock).expect("write_tls");
        }
        open.push(c);
    }
    // Let the answers arrive and everything settle.
    thread::sleep(Duration::from_secs(1));
    let before = voluntary_switches(fe.pid());
    let window = Duration::from_secs(3);
    thread::sleep(window);
    let woke = voluntary_switches(fe.pid()) - before;
    // A worker with nothing to do sleeps up to 5 s; the old loop woke once
    // a second per connection (6,000 here). The allowance covers the
    // process's other threads and the two workers' safety-net wakes.
    let allowed = 8;
    assert!(
        woke <= allowed,
        "{woke} wake-ups in {window:?} with 2,000 idle connections (allowed {allowed})"
    );
    let stats = fe.stats();
    assert_eq!(stats.total.active, 2000, "{stats:?}");
    drop(open);
}

#[test]
fn a_garbage_flood_while_nobody_reads_the_log_stalls_no_worker() {
    let dir = temp_dir();
    let RunCommand {
        mut cmd,
        port,
        reservation: _reservation,
        ..
    } = run_command(
        dir.path(),
        None,
        &[("worker.count", "1"), ("log.level", "info")],
    );
    // stderr is a pipe this test never reads: after 64 KiB every write to
    // it would block, as with a stuck journald.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tlsfront");
    let stdout = child.stdout.take().expect("stdout");
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        match line {
            Ok(l) if l.contains("tlsfront: ready") => {
                ready = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(ready, "tlsfront did not get ready");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    // Every garbage connection is a failed handshake: a log line each.
    for _ in 0..3000 {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(
                b"\x16\x03\x01\x00\x04\x02\x00\x00\x00 not a client hello, and then some",
            );
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut b = [0u8; 64];
            let _ = s.read(&mut b);
        }
    }
    let started = Instant::now();
    let outcome = TlsClient::connect(addr, ClientSpec::new(Trust::AnyCert).build(), "localhost")
        .map(|mut c| c.request(b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(10)));
    let _ = child.kill();
    let _ = child.wait();
    let (resp, _) = outcome.expect("a real client after the flood must be served");
    assert!(is_http_200(&resp), "no answer after the flood: {resp:?}");
    eprintln!(
        "served a real client {:?} after the flood",
        started.elapsed()
    );
}
