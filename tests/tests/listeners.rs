//! Several listeners: `net.listen` as a comma-separated list, every address
//! served by every worker, IPv6 from the client to the upstream.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::time::Duration;
use tlsfront_tests::*;

/// `n` HTTPS GETs to `addr`, each of which must get HTTP 200.
fn get_200(fe: &Frontend, addr: SocketAddr, n: usize) {
    let cfg = ClientSpec::new(Trust::AnyCert).build();
    for i in 0..n {
        let (resp, end) = https_get(addr, cfg.clone(), "localhost")
            .unwrap_or_else(|e| panic!("GET {i} to {addr}: {e}\n{}", fe.output()));
        assert!(
            is_http_200(&resp),
            "GET {i} to {addr}: no HTTP 200 ({end:?})\n{}",
            fe.output()
        );
    }
}

#[test]
fn every_worker_serves_every_listed_address_ipv4_and_ipv6() {
    let ports = [
        ReservedPort::new(),
        ReservedPort::new(),
        ReservedPort::new_v6(),
    ];
    let listen = ports
        .iter()
        .map(ReservedPort::addr_string)
        .collect::<Vec<_>>()
        .join(", ");
    let fe = Frontend::start(&[("net.listen", &listen), ("worker.count", "2")]);
    assert!(
        fe.stdout().contains(&format!("listening on   {listen} ")),
        "the summary lists every address\n{}",
        fe.output()
    );
    const N: usize = 24;
    for port in &ports {
        let before = fe.stats().per_worker("accepted");
        get_200(&fe, port.addr(), N);
        let total = |s: &Stats| s.per_worker("accepted").iter().sum::<u64>();
        let want = before.iter().sum::<u64>() + N as u64;
        let (after, ok) = fe.wait_stats(Duration::from_secs(5), |s| total(s) >= want);
        assert!(ok, "{}: {N} accepts not counted", port.addr());
        let delta: Vec<u64> = after
            .per_worker("accepted")
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect();
        // The kernel's SO_REUSEPORT hash spreads N connections over both
        // workers' sockets of the address unless a worker has none
        // (probability 2^-23 otherwise).
        assert!(
            delta.len() == 2 && delta.iter().all(|&d| d > 0),
            "{}: accepts per worker {delta:?}: a worker does not serve this address",
            port.addr()
        );
    }
}

/// An HTTP upstream on `[::1]` that answers each request with the PROXY v1
/// line it received first, as the body.
fn proxy_line_echo_v6() -> Upstream {
    Upstream::start_at("[::1]:0", |stream| {
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let mut reader = BufReader::new(&stream);
        let mut proxy = String::new();
        if reader.read_line(&mut proxy).is_err() {
            return;
        }
        // The request head ends with an empty line.
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            line.clear();
        }
        let body = proxy.trim_end();
        let _ = (&stream).write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    })
}

#[test]
fn ipv6_end_to_end_curl_to_tlsfront_to_an_ipv6_upstream_with_the_clients_address() {
    let port = ReservedPort::new_v6();
    let upstream = proxy_line_echo_v6();
    let fe = Frontend::start(&[
        ("net.listen", &port.addr_string()),
        ("upstream.addr", &upstream.addr_string()),
        ("upstream.proxy_protocol", "1"),
    ]);
    let mut cmd = tlsfront_tests::prereq::tool("curl");
    cmd.args(["-6", "-k", "-sS", "--max-time", "10"]);
    cmd.arg(format!("https://[::1]:{}/", port.port));
    let out = run_cmd(cmd, b"", CLI_TIMEOUT);
    assert_eq!(
        out.code(),
        Some(0),
        "curl\n{}\n{}",
        out.describe(),
        fe.output()
    );
    // PROXY TCP6 <client> <tlsfront> <client port> <tlsfront port>
    let fields: Vec<&str> = out.stdout.split(' ').collect();
    assert!(
        fields.len() == 6
            && fields[..4] == ["PROXY", "TCP6", "::1", "::1"]
            && fields[5] == port.port.to_string(),
        "the upstream did not get an IPv6 client and listener: {:?}\n{}",
        out.stdout,
        fe.output()
    );
}
