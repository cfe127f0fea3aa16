//! `upstream.proxy_protocol = 2` tells the upstream about the TLS
//! connection in TLVs, as hitch and HAProxy do: ALPN, AUTHORITY (the SNI),
//! and SSL (TLS version, cipher, whether a client certificate was
//! presented and verified). Decoded by a reader of our own
//! (`tests/src/pp2.rs`) and, for the authority and the client address, by a
//! real HAProxy (`accept-proxy`, logging `%[fc_pp_authority]` and `%ci:%cp`).
//!
//! Needs haproxy (scripts/setup.sh).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use tlsfront_tests::haproxy::Haproxy;
use tlsfront_tests::pp2;
use tlsfront_tests::{client_config, ClientSpec, Frontend, TlsClient, Trust, Upstream};

/// tlsfront offering ALPN, sending v2 headers to `upstream`.
fn tlsfront_to(upstream: &str) -> Frontend {
    Frontend::start(&[
        ("worker.count", "1"),
        ("tls.alpn", "h2,http/1.1"),
        ("upstream.addr", upstream),
        ("upstream.proxy_protocol", "2"),
    ])
}

/// An upstream that reads each connection's PROXY v2 header, answers `ok`
/// and hands the header over on the receiver.
fn header_upstream() -> (Upstream, mpsc::Receiver<Result<pp2::Pp2, String>>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let upstream = Upstream::start(move |mut s| {
        let header = pp2::read(&mut s);
        let _ = s.write_all(b"ok");
        let _ = tx.lock().unwrap().send(header);
    });
    (upstream, rx)
}

/// One TLS 1.3 connection for `sni` with ALPN http/1.1; returns the
/// client's address.
fn connect(fe: &Frontend, sni: &str) -> SocketAddr {
    let spec = ClientSpec::new(Trust::AnyCert)
        .alpn(&["http/1.1"])
        .versions(tlsfront_tests::Versions::Tls13);
    let mut c = TlsClient::connect(fe.addr(), client_config(&spec), sni)
        .unwrap_or_else(|e| panic!("TLS: {e}\n{}", fe.output()));
    let me = c.sock.local_addr().expect("addr");
    let _ = c.request(b"hello", Duration::from_secs(5));
    me
}

#[test]
fn the_upstream_learns_alpn_sni_tls_version_cipher_and_that_no_client_certificate_came() {
    let (upstream, rx) = header_upstream();
    let fe = tlsfront_to(&upstream.addr_string());
    let me = connect(&fe, "api.example.com");
    let pp = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the upstream got a connection")
        .unwrap_or_else(|e| panic!("the header does not decode: {e}"));
    assert_eq!(pp.source, Some(me), "the client's address");
    assert_eq!(pp.text(0x01).as_deref(), Some("http/1.1"), "ALPN: {pp:?}");
    assert_eq!(
        pp.text(0x02).as_deref(),
        Some("api.example.com"),
        "AUTHORITY: {pp:?}"
    );
    assert_eq!(
        pp.ssl,
        Some((0x01, 0)),
        "SSL: over TLS, no client certificate, verify 0: {pp:?}"
    );
    assert_eq!(
        pp.text(0x21).as_deref(),
        Some("TLSv1.3"),
        "SSL_VERSION: {pp:?}"
    );
    assert!(
        pp.text(0x23).is_some_and(|c| c.starts_with("TLS_")),
        "SSL_CIPHER names a TLS 1.3 suite as OpenSSL does: {pp:?}"
    );
    assert_eq!(
        pp.text(0x22),
        None,
        "no SSL_CN without a client certificate"
    );
}

/// HAProxy in `mode tcp` reading v2 headers (`accept-proxy`), logging
/// what it decoded, forwarding to `backend`.
fn haproxy_accept_proxy(backend: SocketAddr) -> Haproxy {
    Haproxy::start("    log stdout format raw local0\n", |port| {
        format!(
            "frontend in\n    bind 127.0.0.1:{port} accept-proxy\n\
             \x20   log-format \"authority=%[fc_pp_authority] client=%ci:%cp\"\n    default_backend up\n\
             backend up\n    server up {backend}\n"
        )
    })
}

#[test]
fn haproxy_accept_proxy_decodes_the_authority_and_client_tlsfront_sends() {
    let backend = Upstream::start(|mut s| {
        let _ = s.write_all(b"ok");
    });
    let haproxy = haproxy_accept_proxy(backend.addr);
    let fe = tlsfront_to(&haproxy.addr().to_string());
    let me = connect(&fe, "api.example.com");
    let want = format!("authority=api.example.com client={me}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !haproxy.log().contains(&want) {
        assert!(
            Instant::now() < deadline,
            "HAProxy did not log {want:?}:\n{}\n{}",
            haproxy.log(),
            fe.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_verified_client_certificate_and_its_common_name_reach_the_upstream() {
    use tlsfront_tests::openssl_pki::{s_client, OpensslCa, Usage};
    let dir = tlsfront_tests::temp_dir();
    let ca = OpensslCa::new(dir.path(), "clients");
    let server = ca.issue("server", "localhost", Usage::Server);
    let alice = ca.issue("alice", "alice", Usage::Client);
    let (upstream, rx) = header_upstream();
    let (chain, key, client_ca) = (
        server.chain.display().to_string(),
        server.key.display().to_string(),
        ca.cert.display().to_string(),
    );
    let fe = Frontend::start(&[
        ("worker.count", "1"),
        ("tls.cert", &chain),
        ("tls.key", &key),
        ("tls.client_ca", &client_ca),
        ("tls.client_auth", "required"),
        ("upstream.addr", &upstream.addr_string()),
        ("upstream.proxy_protocol", "2"),
    ]);
    let (cert, key) = (
        alice.cert.display().to_string(),
        alice.key.display().to_string(),
    );
    let out = s_client(fe.port, &["-cert", &cert, "-key", &key]);
    let pp = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| {
            panic!(
                "the upstream got no connection\n{}\n{}",
                out.describe(),
                fe.output()
            )
        })
        .unwrap_or_else(|e| panic!("the header does not decode: {e}"));
    assert_eq!(
        pp.ssl,
        Some((0x01 | 0x02, 0)),
        "SSL: a certificate on this connection, verified: {pp:?}"
    );
    assert_eq!(pp.text(0x22).as_deref(), Some("alice"), "SSL_CN: {pp:?}");
}
