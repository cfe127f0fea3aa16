//! The harness checked against an in-process rustls echo server, so that a
//! failing end-to-end test points at tlsfront, not at the harness.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::clients::provider;
use crate::*;

/// A TLS echo server on 127.0.0.1:0 (one connection per thread): echoes until
/// close_notify/EOF, then sends close_notify.
fn tls_echo_server(leaf: &Leaf) -> SocketAddr {
    let key = rustls::pki_types::PrivateKeyDer::try_from(
        rcgen::KeyPair::from_pem(&leaf.key_pem)
            .unwrap()
            .serialize_der(),
    )
    .unwrap();
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der.clone()], key)
            .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let cfg = cfg.clone();
            thread::spawn(move || {
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut t = rustls::StreamOwned::new(conn, s);
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match t.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if t.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                t.conn.send_close_notify();
                let _ = t.flush();
            });
        }
    });
    addr
}

#[test]
fn pattern_is_deterministic_and_chunking_independent() {
    let whole = Pattern::bytes(42, 1000);
    let mut p = Pattern::new(42);
    let mut parts = Vec::new();
    for n in [1usize, 7, 8, 13, 300, 671] {
        let mut b = vec![0u8; n];
        p.fill(&mut b);
        parts.extend_from_slice(&b);
    }
    assert_eq!(whole, parts);
    let mut c = PatternCheck::new(42);
    c.feed(&whole[..500]);
    let mut bad = whole[500..].to_vec();
    bad[10] ^= 1;
    c.feed(&bad);
    assert_eq!(c.first_mismatch, Some(510));
}

#[test]
fn pump_echoes_8_mib_both_ways_and_sees_close_notify() {
    let pki = Pki::new();
    let addr = tls_echo_server(&pki.leaf(&["localhost"]));
    let mut c =
        TlsClient::connect(addr, ClientSpec::new(pki.trust()).build(), "localhost").unwrap();
    const LEN: u64 = 8 << 20;
    let (r, check) = c.echo_pattern(
        3,
        LEN,
        &PumpOpts::close_notify_after_send(Duration::from_secs(60)),
    );
    assert_eq!(r.end, End::CloseNotify, "{r:?}");
    assert_eq!(check.received, LEN);
    assert_eq!(check.first_mismatch, None);
}

#[test]
fn pump_stops_at_count_and_request_reads_to_close() {
    let pki = Pki::new();
    let addr = tls_echo_server(&pki.leaf(&["localhost"]));
    let mut c =
        TlsClient::connect(addr, ClientSpec::new(pki.trust()).build(), "localhost").unwrap();
    let mut src = pattern_source(9, 1);
    let mut got = Vec::new();
    let mut sink = |d: &[u8]| got.extend_from_slice(d);
    let r = c.pump(
        &mut src,
        &mut sink,
        &PumpOpts::receive(1, Duration::from_secs(10)),
    );
    assert_eq!(r.end, End::Count);
    assert_eq!(got, Pattern::bytes(9, 1));
    // A plain TCP server that closes without close_notify gives TcpEof.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        thread::sleep(Duration::from_millis(50));
        drop(s);
    });
    let err = TlsClient::connect(a, ClientSpec::new(Trust::AnyCert).build(), "localhost");
    assert!(err.is_err());
}

#[test]
fn refusing_port_refuses() {
    let p = RefusingPort::new();
    let e = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], p.port)), IO_TIMEOUT)
        .expect_err("connect to a bound, non-listening socket must fail");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
}

#[test]
fn stats_json_parses() {
    let s = Stats::parse(
        r#"{"workers":[{"worker":0,"cpu":0,"accepted":3,"handshakes":2,"handshake_errors":1,"active":0,"upstream_errors":0,"bytes_client_to_upstream":10,"bytes_upstream_to_client":20}],
           "total":{"accepted":3,"handshakes":2,"handshake_errors":1,"active":0,"upstream_errors":0,"bytes_client_to_upstream":10,"bytes_upstream_to_client":20}}"#,
    )
    .unwrap();
    assert_eq!(s.workers.len(), 1);
    assert_eq!(s.workers[0].handshakes, 2);
    assert_eq!(s.total.bytes_upstream_to_client, 20);
}
