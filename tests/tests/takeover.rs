//! An upgrade (`tlsfront run --takeover`) that also changes settings: the
//! newcomer shares the ports with the running process until that one has
//! drained, so every client is served throughout, and once the old process
//! is gone only the new settings are in effect. Judged by which real
//! upstream server answered each real TLS client.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tlsfront_tests::lifecycle::Proc;
use tlsfront_tests::{
    client_config, temp_dir, ClientSpec, ReservedPort, TlsClient, Trust, Upstream,
};

/// A server that reads the request and answers its own name.
fn named(name: &'static str) -> Upstream {
    Upstream::start(move |mut s| {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let _ = s.write_all(name.as_bytes());
    })
}

/// Which upstream answered one TLS connection to `addr`.
fn served_by(addr: SocketAddr) -> Result<String, String> {
    let cfg = client_config(&ClientSpec::new(Trust::AnyCert));
    let mut c = TlsClient::connect(addr, Arc::clone(&cfg), "localhost")
        .map_err(|e| format!("TLS to {addr}: {e}"))?;
    let (resp, _) = c.request(b"hello", Duration::from_secs(10));
    Ok(String::from_utf8_lossy(&resp).into_owned())
}

/// The options both processes share (same files, same ports), plus `more`.
fn opts(dir: &std::path::Path, listen: &str, more: &[(&str, &str)]) -> Vec<(String, String)> {
    let path = |name: &str| dir.join(name).display().to_string();
    let mut v = vec![
        ("net.listen".to_string(), listen.to_string()),
        ("control.socket".to_string(), path("ctl.sock")),
        ("cache.path".to_string(), path("c.cache")),
        ("tickets.path".to_string(), path("k.ring")),
        ("worker.count".to_string(), "2".to_string()),
    ];
    v.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    v
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn takeover(opts: &[(String, String)]) -> Proc {
    let wrapper = ["sh", "-c", "exec \"$0\" \"$@\" --takeover"];
    Proc::start_wrapped(&wrapper, None, &as_refs(opts))
}

fn stop(mut old: Proc) {
    old.signal(libc::SIGTERM);
    assert!(
        old.wait_exit(Duration::from_secs(20)).is_some(),
        "the old process did not stop\n{}",
        old.output()
    );
}

#[test]
fn a_takeover_that_changes_upstream_addr_serves_every_client_then_only_the_new_servers() {
    let dir = temp_dir();
    let port = ReservedPort::new();
    let listen = port.addr_string();
    let (a, b) = (named("a"), named("b"));
    let old = Proc::start(
        None,
        &as_refs(&opts(
            dir.path(),
            &listen,
            &[("upstream.addr", &a.addr_string())],
        )),
    );
    let addr = old.addr();
    assert_eq!(served_by(addr).as_deref(), Ok("a"));

    let new = takeover(&opts(
        dir.path(),
        &listen,
        &[("upstream.addr", &b.addr_string())],
    ));
    // Both accept on the port now: each client goes to one of them, and
    // each process to its own upstream.
    let during: Vec<String> = (0..20)
        .map(|i| served_by(addr).unwrap_or_else(|e| panic!("client {i} while both ran: {e}")))
        .collect();
    assert!(
        during.iter().all(|s| s == "a" || s == "b"),
        "while both ran: {during:?}\n{}",
        new.output()
    );
    stop(old);
    let after: Vec<String> = (0..10)
        .map(|i| served_by(addr).unwrap_or_else(|e| panic!("client {i} after: {e}")))
        .collect();
    assert!(
        after.iter().all(|s| s == "b"),
        "after the old process left, only upstream.addr's new server may answer: {after:?}\n{}",
        new.output()
    );
}

#[test]
fn a_takeover_of_a_process_with_two_listen_addresses_serves_both_throughout() {
    let dir = temp_dir();
    let (p1, p2) = (ReservedPort::new(), ReservedPort::new());
    let listen = format!("{}, {}", p1.addr_string(), p2.addr_string());
    let up = named("up");
    let settings = opts(dir.path(), &listen, &[("upstream.addr", &up.addr_string())]);
    let old = Proc::start(None, &as_refs(&settings));
    let addrs = [p1.addr(), p2.addr()];
    let new = takeover(&settings);
    for addr in addrs {
        for i in 0..10 {
            assert_eq!(
                served_by(addr).as_deref(),
                Ok("up"),
                "{addr}, client {i} while both ran\n{}",
                new.output()
            );
        }
    }
    stop(old);
    for addr in addrs {
        for i in 0..10 {
            assert_eq!(
                served_by(addr).as_deref(),
                Ok("up"),
                "{addr}, client {i} after the old process left\n{}",
                new.output()
            );
        }
    }
}

/// One TLS connection to `addr` that first sends a PROXY v1 header naming
/// `client` (as a balancer would): which upstream answered.
fn served_through_balancer(addr: SocketAddr, client: &str) -> Result<String, String> {
    let mut sock =
        std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let header = format!("PROXY TCP4 {client} 127.0.0.1 40000 {}\r\n", addr.port());
    sock.write_all(header.as_bytes())
        .map_err(|e| format!("PROXY header to {addr}: {e}"))?;
    let cfg = client_config(&ClientSpec::new(Trust::AnyCert));
    let mut c = TlsClient::handshake_over(sock, cfg, "localhost")
        .map_err(|e| format!("TLS to {addr} after a PROXY header: {e}"))?;
    let (resp, _) = c.request(b"hello", Duration::from_secs(10));
    Ok(String::from_utf8_lossy(&resp).into_owned())
}

#[test]
fn a_takeover_that_turns_on_net_proxy_protocol_wants_the_header_once_the_old_process_left() {
    let dir = temp_dir();
    let port = ReservedPort::new();
    let listen = port.addr_string();
    let up = named("up");
    let old = Proc::start(
        None,
        &as_refs(&opts(
            dir.path(),
            &listen,
            &[("upstream.addr", &up.addr_string())],
        )),
    );
    let addr = old.addr();
    assert_eq!(served_by(addr).as_deref(), Ok("up"), "before: no header");

    // A balancer is put in front: the successor expects its PROXY header.
    let new = takeover(&opts(
        dir.path(),
        &listen,
        &[
            ("upstream.addr", &up.addr_string()),
            ("net.proxy_protocol", "1"),
            ("net.proxy_protocol.trusted", "127.0.0.0/8"),
        ],
    ));
    stop(old);
    assert_eq!(
        served_through_balancer(addr, "192.0.2.7").as_deref(),
        Ok("up"),
        "after: a connection with the header is served\n{}",
        new.output()
    );
    assert!(
        served_by(addr).map_or(true, |answer| answer.is_empty()),
        "after: a connection without the header must not be served\n{}",
        new.output()
    );
}
