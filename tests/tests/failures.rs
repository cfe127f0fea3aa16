//! Failure handling: an upstream that refuses, and clients that do not speak TLS.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tlsfront_tests::*;

/// A frontend whose upstream is a loopback port that refuses connections (kept
/// reserved by the returned [`RefusingPort`]).
fn frontend_with_dead_upstream(pki: &Pki, dir: &TempDir) -> (Frontend, RefusingPort) {
    let (c, k) = pki.leaf(&["localhost"]).write(dir.path(), "localhost");
    let dead = RefusingPort::new();
    let fe = Frontend::start(&[
        ("tls.cert", c.to_str().unwrap()),
        ("tls.key", k.to_str().unwrap()),
        ("upstream.addr", &dead.addr_string()),
        ("upstream.connect_timeout", "2s"),
    ]);
    (fe, dead)
}

/// Waits up to 5 s for the server to end the stream; panics on a hang.
fn expect_prompt_close(client: &mut TlsClient, fe: &Frontend) -> End {
    let mut nothing = |_: &mut [u8]| 0usize;
    let mut got = Vec::new();
    let mut sink = |d: &[u8]| got.extend_from_slice(d);
    let r = client.pump(
        &mut nothing,
        &mut sink,
        &PumpOpts {
            close_notify_after_send: false,
            tcp_shutdown_after_close_notify: false,
            recv_until: None,
            timeout: Duration::from_secs(5),
        },
    );
    assert_ne!(
        r.end,
        End::Timeout,
        "connection still open 5 s after the upstream refused (got {} bytes)\n{}",
        got.len(),
        fe.output()
    );
    r.end
}

#[test]
fn refused_upstream_closes_client_promptly_and_next_client_still_handshakes() {
    let (pki, dir) = (Pki::new(), temp_dir());
    let (fe, _dead) = frontend_with_dead_upstream(&pki, &dir);
    let cfg = ClientSpec::new(pki.trust()).build();

    let mut first = TlsClient::connect(fe.addr(), cfg.clone(), "localhost").unwrap_or_else(|e| {
        panic!(
            "handshake failed (upstream should only matter afterwards): {e}\n{}",
            fe.output()
        )
    });
    let end = expect_prompt_close(&mut first, &fe);
    eprintln!("first client ended with {end:?}");

    let mut second = TlsClient::connect(fe.addr(), cfg, "localhost")
        .unwrap_or_else(|e| panic!("second client's handshake failed: {e}\n{}", fe.output()));
    expect_prompt_close(&mut second, &fe);
}

#[test]
fn refused_upstream_is_counted_in_upstream_errors() {
    let (pki, dir) = (Pki::new(), temp_dir());
    let (fe, _dead) = frontend_with_dead_upstream(&pki, &dir);
    let mut c = TlsClient::connect(fe.addr(), ClientSpec::new(pki.trust()).build(), "localhost")
        .unwrap_or_else(|e| panic!("handshake failed: {e}\n{}", fe.output()));
    expect_prompt_close(&mut c, &fe);
    let (stats, ok) = fe.wait_stats(Duration::from_secs(5), |s| s.total.upstream_errors >= 1);
    assert!(
        ok,
        "total.upstream_errors stayed 0: {stats:?}\n{}",
        fe.output()
    );
    let sum: u64 = stats.workers.iter().map(|w| w.upstream_errors).sum();
    assert_eq!(
        sum, stats.total.upstream_errors,
        "per-worker upstream_errors do not add up to the total"
    );
}

/// Sends `garbage` as the first bytes of a TCP connection and expects the server
/// to close it within 5 s.
fn garbage_is_closed(fe: &Frontend, garbage: &[u8], what: &str) {
    let mut s = TcpStream::connect_timeout(&fe.addr(), IO_TIMEOUT).expect("TCP connect");
    // The server may close as soon as it has seen enough, so a write error is fine.
    let _ = s.write_all(garbage);
    let start = Instant::now();
    let (reply, res) = read_until_closed(&mut s, Duration::from_secs(5));
    assert_ne!(
        res,
        Err(std::io::ErrorKind::TimedOut),
        "{what}: connection still open after 5 s (server sent {} bytes)\n{}",
        reply.len(),
        fe.output()
    );
    eprintln!(
        "{what}: closed after {:?} with {res:?}, {} bytes sent back",
        start.elapsed(),
        reply.len()
    );
}

fn tls_client_succeeds(fe: &Frontend) {
    let cfg = ClientSpec::new(Trust::AnyCert).build();
    let (resp, end) = https_get(fe.addr(), cfg, "localhost")
        .unwrap_or_else(|e| panic!("TLS client after garbage failed: {e}\n{}", fe.output()));
    assert!(
        is_http_200(&resp),
        "TLS client after garbage got no HTTP 200 ({end:?}): {:?}\n{}",
        String::from_utf8_lossy(&resp),
        fe.output()
    );
}

#[test]
fn plain_http_first_bytes_close_the_connection_and_next_tls_client_succeeds() {
    let fe = Frontend::start(&[]);
    garbage_is_closed(
        &fe,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "plain HTTP",
    );
    tls_client_succeeds(&fe);
}

#[test]
fn binary_garbage_first_bytes_close_the_connection_and_next_tls_client_succeeds() {
    let fe = Frontend::start(&[]);
    let counting: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    // A handshake record whose body is not a ClientHello.
    let bad_record = [0x16, 0x03, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o'];
    // A handshake record header announcing an over-long record.
    let mut huge = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    huge.extend_from_slice(&[0xAA; 100]);
    for (what, g) in [
        ("bytes 00..ff", &counting[..]),
        ("malformed handshake record", &bad_record[..]),
        ("over-long record header", &huge[..]),
    ] {
        garbage_is_closed(&fe, g, what);
        tls_client_succeeds(&fe);
    }
}

/// The line of `stderr` at `level` that names the client `peer` and a
/// worker, if any.
fn log_line(stderr: &str, level: &str, peer: std::net::SocketAddr) -> Option<String> {
    stderr
        .lines()
        .find(|l| {
            l.split_whitespace().nth(1) == Some(level)
                && l.contains(&format!("peer={peer}"))
                && l.contains("worker=")
        })
        .map(str::to_string)
}

#[test]
fn a_failed_handshake_is_logged_at_info_and_an_unreachable_upstream_at_warn_naming_client_and_worker(
) {
    let (pki, dir) = (Pki::new(), temp_dir());
    let (fe, dead) = frontend_with_dead_upstream(&pki, &dir);
    let wait_line = |level: &str, peer| {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(l) = log_line(&fe.stderr(), level, peer) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no {level} line naming peer={peer} and a worker\n{}",
                fe.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let mut garbage = TcpStream::connect_timeout(&fe.addr(), IO_TIMEOUT).expect("connect");
    let peer = garbage.local_addr().expect("local_addr");
    garbage
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .expect("write plain HTTP");
    let line = wait_line("INFO", peer);
    assert!(line.contains("handshake failed"), "{line}");

    let mut c = TlsClient::connect(fe.addr(), ClientSpec::new(pki.trust()).build(), "localhost")
        .unwrap_or_else(|e| panic!("handshake failed: {e}\n{}", fe.output()));
    let peer = c.sock.local_addr().expect("local_addr");
    expect_prompt_close(&mut c, &fe);
    let line = wait_line("WARN", peer);
    assert!(
        line.contains(&dead.addr_string()),
        "the upstream is not named: {line}"
    );
}
